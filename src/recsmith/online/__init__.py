"""Online features: a key-value store of per-user histories and per-item statistics
(SQLite embedded, or Redis), filled from a prepared sequence dataset, and the features of a
request rebuilt from it by the same code that built the training features."""
