"""A text split tokenized once and cached, and its batches: length-bucketed for training,
length-sorted for scoring, each padded to its own longest text (dynamic padding).

Cache: `<dataset dir>/tokens/<key>/<split>.npz` with the token ids of every text back to
back (`ids`, int32), where each text starts (`offsets`, int64, one more than texts) and
`labels`; the key names the tokenizer (its name, vocabulary size and class) and max_length.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from recsmith.errors import DataError

TOKENIZE_ROWS = 4096  # texts per tokenizer call
BUCKET_BATCHES = 50  # a training epoch sorts runs of this many batches by length, then shuffles the batches


@dataclass
class TokenizedSplit:
    ids: np.ndarray  # int32, every text's tokens back to back
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray  # int64 [N]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def load(cls, dataset_dir: Path, split: str, tokenizer, max_length: int) -> "TokenizedSplit":
        """The split's tokens from the cache, tokenizing (and caching) them the first time."""
        path = Path(dataset_dir) / "tokens" / cache_key(tokenizer, max_length) / f"{split}.npz"
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if path.is_file():
            with np.load(path) as data:
                return cls(data["ids"], data["offsets"], data["labels"], pad_id)
        texts, labels = read_split(Path(dataset_dir) / f"{split}.parquet")
        pieces = []
        for start in range(0, len(texts), TOKENIZE_ROWS):
            encoded = tokenizer(texts[start:start + TOKENIZE_ROWS], truncation=True, max_length=max_length)
            pieces.extend(np.asarray(row, np.int32) for row in encoded["input_ids"])
        offsets = np.zeros(len(pieces) + 1, np.int64)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        _save_atomic(path, ids=ids, offsets=offsets, labels=labels)
        return cls(ids, offsets, labels, pad_id)

    def batch(self, rows: torch.Tensor) -> "TextBatch":
        """Rows `rows` padded to the longest of them."""
        rows_np = rows.numpy()
        starts, lengths = self.offsets[rows_np], self.lengths[rows_np]
        width = int(lengths.max()) if len(rows_np) else 0
        ids = np.full((len(rows_np), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows_np), width), np.int64)
        for i, (start, length) in enumerate(zip(starts, lengths)):
            ids[i, :length] = self.ids[start:start + length]
            mask[i, :length] = 1
        return TextBatch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(self.labels[rows_np]))

    def scoring_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, "TextBatch"]]:
        """(rows, batch) over the whole split, shortest texts first (little padding)."""
        order = torch.from_numpy(np.argsort(self.lengths, kind="stable"))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield rows, self.batch(rows)


def cache_key(tokenizer, max_length: int) -> str:
    what = {"tokenizer": getattr(tokenizer, "name_or_path", ""), "class": type(tokenizer).__name__,
            "vocab": len(tokenizer), "max_length": max_length}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    table = pq.read_table(path, columns=["text", "label"])
    return table["text"].to_pylist(), table["label"].to_numpy().astype(np.int64)


def _save_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@dataclass
class TextBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    label: torch.Tensor

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids, self.attention_mask

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        return {"label": self.label}

    def to(self, device) -> "TextBatch":
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device), self.label.to(device))


class TextStream:
    """Endless training batches with a resumable position (epoch, batch in epoch), like
    recsmith.data.batches.TrainStream: epoch e's order is drawn from (seed, e); runs of
    BUCKET_BATCHES batches are sorted by length, cut into batches and the batches shuffled,
    so a batch holds texts of similar length (little padding) and the order stays random.
    `batch_size` is the global batch; under DDP rank r takes every world_size-th row of a
    batch, and `micro_batches` k > 1 yields each step as k micro-batches."""

    def __init__(self, data: TokenizedSplit, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 micro_batches: int = 1):
        if len(data) < batch_size:
            raise DataError(f"the training split has {len(data)} texts, fewer than one batch (data.batch_size "
                            f"{batch_size})")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.epoch, self.batch_in_epoch = 0, 0
        self._batches: list[torch.Tensor] | None = None

    def shard(self, rank: int, world_size: int, micro_batches: int = 1) -> "TextStream":
        stream = TextStream(self.data, self.batch_size, self.seed, rank, world_size, micro_batches)
        stream.epoch, stream.batch_in_epoch = self.epoch, self.batch_in_epoch
        return stream

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=generator)
        lengths = torch.from_numpy(self.data.lengths)
        run = self.batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), run):
            chunk = order[start:start + run]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk) - self.batch_size + 1,
                                                                       self.batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._batches = None

    def __iter__(self):
        while True:
            if self._batches is None:
                self._batches = self.epoch_batches(self.epoch)
            if self.batch_in_epoch >= len(self._batches):
                self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
                continue
            rows = self._batches[self.batch_in_epoch]
            if self.world_size > 1:
                rows = rows[self.rank::self.world_size]
            self.batch_in_epoch += 1
            if self.micro_batches == 1:
                yield self.data.batch(rows)
            else:
                yield [self.data.batch(part) for part in rows.chunk(self.micro_batches)]
