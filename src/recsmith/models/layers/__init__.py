"""Building blocks, one role per file: embedding, fm, mlp, crossnet, gates, aligner, experts."""
