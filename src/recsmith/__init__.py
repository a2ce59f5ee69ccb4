"""recsmith: a workbench for ranking models in ads and recommendation."""

__version__ = "0.1.0"
