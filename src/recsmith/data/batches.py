"""Batches: slices of contiguous in-memory tensors. One shuffled permutation per epoch,
one gather per batch, no per-row Python and no per-sample `__getitem__`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from recsmith.data.schema import DatasetSchema
from recsmith.errors import DataError
from recsmith.tasks import TaskSpec


@dataclass
class Batch:
    sparse: torch.Tensor  # [B, F] int32 ids (per field; the embedding adds offsets)
    dense: torch.Tensor  # [B, D] float32
    labels: dict[str, torch.Tensor]  # name -> [B] float32

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranking model's forward arguments."""
        return self.sparse, self.dense

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(self.sparse.to(device, non_blocking=True),
                     self.dense.to(device, non_blocking=True),
                     {k: v.to(device, non_blocking=True) for k, v in self.labels.items()})


@dataclass
class SplitData:
    """One split of a prepared dataset, held as contiguous tensors."""

    sparse: torch.Tensor  # [N, F] int32
    dense: torch.Tensor  # [N, D] float32
    labels: dict[str, torch.Tensor]  # [N] float32
    columns: dict[str, np.ndarray]  # truth and grouping columns, for evaluation only
    tasks: dict[str, TaskSpec]  # the dataset's tasks (which label each head predicts)

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def take(self, index: torch.Tensor) -> Batch:
        return Batch(self.sparse.index_select(0, index), self.dense.index_select(0, index),
                     {k: v.index_select(0, index) for k, v in self.labels.items()})

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(self.sparse[start:stop], self.dense[start:stop],
                     {k: v[start:stop] for k, v in self.labels.items()})

    def subset(self, mask: np.ndarray) -> "SplitData":
        index = torch.from_numpy(np.flatnonzero(mask))
        batch = self.take(index)
        return SplitData(batch.sparse, batch.dense, batch.labels,
                         {k: v[mask] for k, v in self.columns.items()}, self.tasks)


LOAD_BATCH_ROWS = 1 << 18  # rows decoded at a time: peak memory = the arrays + one batch


def load_split(directory: str | Path, schema: DatasetSchema, split: str, with_columns: bool = True) -> SplitData:
    """Read one split's Parquet file into contiguous tensors (`with_columns`: also the
    truth and user columns evaluation needs), batch by batch into preallocated arrays."""
    path = Path(directory) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    truth = schema.truth if with_columns else []
    wanted = schema.sparse_names + schema.dense_names + schema.labels + truth
    try:
        handle = pq.ParquetFile(path)
        rows = handle.metadata.num_rows
        batches = handle.iter_batches(batch_size=LOAD_BATCH_ROWS, columns=wanted)
        sparse = np.empty((rows, len(schema.sparse)), dtype=np.int32)
        dense = np.empty((rows, len(schema.dense)), dtype=np.float32)
        labels = {name: np.empty(rows, dtype=np.float32) for name in schema.labels}
        columns = {name: np.empty(rows, dtype=np.float64) for name in truth}
        start = 0
        for batch in batches:
            stop = start + batch.num_rows
            for j, name in enumerate(schema.sparse_names):
                sparse[start:stop, j] = batch.column(name).to_numpy(zero_copy_only=False)
            for j, name in enumerate(schema.dense_names):
                dense[start:stop, j] = batch.column(name).to_numpy(zero_copy_only=False)
            for name, values in (*labels.items(), *columns.items()):
                values[start:stop] = batch.column(name).to_numpy(zero_copy_only=False)
            start = stop
    except (OSError, KeyError, ValueError, TypeError) as exc:  # missing columns, foreign files
        raise DataError(f"{path}: cannot read the columns the schema names ({exc})") from None
    except Exception as exc:  # pyarrow's own error types
        raise DataError(f"{path}: cannot read the columns the schema names ({exc})") from None
    _check_values(path, schema, sparse, dense, labels)
    if with_columns and schema.user_field is not None:
        columns["user"] = sparse[:, schema.sparse_names.index(schema.user_field)].copy()
    return SplitData(torch.from_numpy(sparse), torch.from_numpy(dense),
                     {name: torch.from_numpy(values) for name, values in labels.items()}, columns, schema.task_specs)


def _check_values(path: Path, schema: DatasetSchema, sparse: np.ndarray, dense: np.ndarray,
                  labels: dict[str, np.ndarray]) -> None:
    """Ids within their vocabularies, finite dense values, 0/1 labels observed where their
    task says they can be: a DataError naming the file and the column otherwise."""
    if len(sparse):
        low, high = sparse.min(axis=0), sparse.max(axis=0)
        for j, field in enumerate(schema.sparse):
            if low[j] < 0 or high[j] >= field.vocab_size:
                raise DataError(f"{path}: field '{field.name}' has ids outside [0, {field.vocab_size})")
    for j, name in enumerate(schema.dense_names):
        bad = int((~np.isfinite(dense[:, j])).sum())
        if bad:
            raise DataError(f"{path}: dense field '{name}' has {bad} NaN or infinite values")
    for name, values in labels.items():
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(f"{path}: label '{name}' has values other than 0 and 1")
    for task in schema.tasks:
        if task.observed_when:
            count = int((labels[task.label] > labels[task.observed_when]).sum())
            if count:
                raise DataError(f"{path}: {count} rows have {task.label} = 1 where {task.observed_when} = 0")


class TrainStream:
    """Endless training batches with a resumable position (epoch, batch in epoch).

    The order of epoch e is a permutation drawn from a generator seeded with (seed, e),
    so any position can be recreated without replaying earlier epochs. `keep_negatives`
    < 1 drops each negative of `label` with that probability anew every epoch.

    `batch_size` is the global batch: step i takes rows order[i·B : (i+1)·B] whatever the
    number of processes. Under DDP (`world_size` ranks) rank r takes every world_size-th of
    them, starting at r; with `micro_batches` k > 1 (gradient accumulation) a step yields
    its rows as a list of k equal micro-batches. So one process, two ranks, or two
    accumulation steps see exactly the same rows per optimizer step.
    """

    def __init__(self, data: SplitData, batch_size: int, seed: int, keep_negatives: float = 1.0,
                 label: str = "click", rank: int = 0, world_size: int = 1, micro_batches: int = 1):
        if len(data) < batch_size:
            raise DataError(f"the training split has {len(data)} rows, fewer than one batch (data.batch_size "
                            f"{batch_size})")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.keep_negatives, self.label = keep_negatives, label
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.epoch, self.batch_in_epoch = 0, 0
        self._order: torch.Tensor | None = None

    def shard(self, rank: int, world_size: int, micro_batches: int = 1) -> "TrainStream":
        """The same stream as rank `rank` of `world_size` sees it (position kept)."""
        stream = TrainStream(self.data, self.batch_size, self.seed, self.keep_negatives, self.label,
                             rank, world_size, micro_batches)
        stream.epoch, stream.batch_in_epoch = self.epoch, self.batch_in_epoch
        return stream

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=generator)
        if self.keep_negatives < 1.0:
            keep = torch.rand(len(self.data), generator=generator) < self.keep_negatives
            keep |= self.data.labels[self.label] > 0
            order = order[keep[order]]
        return order

    def batches_in_epoch(self, order: torch.Tensor) -> int:
        return len(order) // self.batch_size  # the last partial batch is dropped

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._order = None

    def __iter__(self) -> Iterator:
        while True:
            if self._order is None:
                self._order = self.epoch_order(self.epoch)
            if self.batch_in_epoch >= self.batches_in_epoch(self._order):
                self.epoch, self.batch_in_epoch, self._order = self.epoch + 1, 0, None
                continue
            start = self.batch_in_epoch * self.batch_size
            index = self._order[start : start + self.batch_size]
            if self.world_size > 1:
                index = index[self.rank :: self.world_size]
            self.batch_in_epoch += 1
            if self.micro_batches == 1:
                yield self.data.take(index)
            else:
                yield [self.data.take(part) for part in index.chunk(self.micro_batches)]


def eval_batches(data: SplitData, batch_size: int) -> Iterator[Batch]:
    """The split in order, in slices of `batch_size` (views, no copies)."""
    for start in range(0, len(data), batch_size):
        yield data.slice(start, min(start + batch_size, len(data)))
