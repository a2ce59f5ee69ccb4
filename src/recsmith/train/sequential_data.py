"""Training and evaluation inputs of the sequential family, as contiguous tensors.

`WindowData` (next-item models) and `CandidateData` (DIN) look like a split to
`recsmith.data.batches.TrainStream`: `len()`, `take(index)` and `labels`, so the same
resumable, seeded epoch order drives both families.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.data.sequences import InteractionLog, histories, train_windows


@dataclass
class SequenceBatch:
    inputs: tuple[torch.Tensor, ...]  # the model's forward arguments
    labels: dict[str, torch.Tensor]

    def to(self, device: torch.device) -> "SequenceBatch":
        if device.type == "cpu":
            return self
        return SequenceBatch(tuple(t.to(device, non_blocking=True) for t in self.inputs),
                             {k: v.to(device, non_blocking=True) for k, v in self.labels.items()})


class WindowData:
    """Train windows: every position of a window predicts its next item at once."""

    def __init__(self, log: InteractionLog, max_length: int):
        windows = train_windows(log, max_length)
        self.items, self.targets, self.source = (torch.from_numpy(a) for a in
                                                 (windows.items, windows.targets, windows.source))
        self.labels = {"next_item": self.targets}
        self.num_targets = int((windows.targets > 0).sum())

    def __len__(self) -> int:
        return self.items.shape[0]

    def take(self, index: torch.Tensor) -> SequenceBatch:
        targets = self.targets.index_select(0, index)
        return SequenceBatch((self.items.index_select(0, index), targets, self.source.index_select(0, index)),
                             {"next_item": targets[targets > 0]})


class EventHistories:
    """The right-padded visible history of each distinct target event, looked up by event."""

    def __init__(self, log: InteractionLog, events: np.ndarray, max_length: int):
        self.events = np.unique(events)
        items, lengths, ages = histories(log, self.events, max_length)
        self.items, self.lengths, self.ages = torch.from_numpy(items), torch.from_numpy(lengths), torch.from_numpy(ages)

    def rows(self, events: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(self.events, events))


class CandidateData:
    """Candidate rows (event, candidate item, like label) with their events' histories."""

    def __init__(self, dataset: SequenceDataset, split: str, max_length: int):
        rows = dataset.candidates(split, ["event", "item_id", "like"])
        self.events = rows["event"]
        self.history = EventHistories(dataset.log, self.events, max_length)
        self.row = self.history.rows(self.events)  # [N] index into the history arrays
        self.candidates = torch.from_numpy(rows["item_id"].astype(np.int64))
        self.labels = {"like": torch.from_numpy(rows["like"].astype(np.float32))}

    def __len__(self) -> int:
        return len(self.candidates)

    def take(self, index: torch.Tensor) -> SequenceBatch:
        row = self.row.index_select(0, index)
        return SequenceBatch((self.history.items.index_select(0, row), self.history.ages.index_select(0, row),
                              self.candidates.index_select(0, index)),
                             {"like": self.labels["like"].index_select(0, index)})
