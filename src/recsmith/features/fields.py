"""The encoded fields a feature pipeline produces and a dataset schema lists, and the file
holding the fitted encoders. Here, below both: features are made by the pipeline, and the
dataset (recsmith.data) is prepared with it."""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class SparseField:
    """A categorical field encoded to ids in [0, vocab_size); id 0 means unknown."""

    name: str
    vocab_size: int
    entity: str = "context"  # user | item | context


@dataclass(frozen=True)
class DenseField:
    name: str
