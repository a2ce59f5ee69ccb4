"""Feature definitions (YAML), fitted encoders, and the pipeline shared by prepare and serving."""
