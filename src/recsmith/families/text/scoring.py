"""Scoring raw texts with a text_classifier run or bundle (recsmith predict, the service):
the run's tokenizer and model, each class's probability in fp32, longest texts batched
together. The checkpoint the run started from must be loadable where it scores (the
packaged MiniLM always is; a folder or hub name must exist there too): its tokenizer and
architecture come from it, the weights from the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from recsmith.data.schema import DatasetSchema
from recsmith.errors import DataError
from recsmith.models.text.classifier import TASK, TextClassifier, load_tokenizer
from recsmith.train.checkpoint import load_checkpoint

TEXT_COLUMN = "text"
SCORE_BATCH = 64  # texts per forward pass


@dataclass(frozen=True)
class _Columns:
    columns: list[str]


@dataclass(frozen=True)
class TextInput:
    """What a request row holds (the `pipeline` the service and batch inference read)."""

    raw_schema: pa.Schema = pa.schema([(TEXT_COLUMN, pa.string())])
    features: _Columns = _Columns([TEXT_COLUMN])


class TextScorer:
    def __init__(self, cfg, meta: dict, data_dir: Path, weights: Path):
        self.cfg, self.meta = cfg, meta
        self.classes = list(DatasetSchema.load(data_dir).meta["classes"])
        self.tasks, self.outputs, self.pipeline = [TASK], self.classes, TextInput()
        self.tokenizer = load_tokenizer(cfg.model.checkpoint)
        self.model = TextClassifier(cfg.model.checkpoint, len(self.classes), cfg.model.dropout)
        state = load_checkpoint(weights)  # weights_only: a checkpoint holds no code
        self.model.load_state_dict(state["model"])
        self.model.eval()

    @torch.no_grad()
    def predict_texts(self, texts: list[str]) -> np.ndarray:
        """[N, C] class probabilities."""
        out = np.empty((len(texts), len(self.classes)), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), SCORE_BATCH):
            rows = order[start:start + SCORE_BATCH]
            encoded = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.cfg.model.max_length,
                                     padding=True, return_tensors="pt")
            logits = self.model(encoded["input_ids"], encoded["attention_mask"])[TASK].float()
            out[rows] = torch.softmax(logits, dim=1).numpy()
        return out

    def predict_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        if TEXT_COLUMN not in table.column_names:
            raise DataError(f"the rows lack the column '{TEXT_COLUMN}'")
        texts = table[TEXT_COLUMN].to_pylist()
        missing = [i for i, t in enumerate(texts) if t is None]
        if missing:
            raise DataError(f"row {missing[0]}: '{TEXT_COLUMN}' is null")
        probs = self.predict_texts(texts)
        return {name: probs[:, i] for i, name in enumerate(self.classes)}

    def describe(self) -> dict:
        return {"tasks": self.tasks, "outputs": self.outputs, "columns": [TEXT_COLUMN],
                "checkpoint": self.cfg.model.checkpoint, **self.meta}
