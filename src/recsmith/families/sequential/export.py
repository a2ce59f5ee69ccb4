"""`recsmith export` of a sequence run: the trained network as a graph of plain tensors, with
the test split's inputs to check the export against PyTorch (recsmith.serve.export).

Next-item models (SASRec, GRU4Rec, NARM, AvgPool): items [N, L] int64 (the right-padded last
L items of a history, 0 = padding), lengths [N] int64 → scores [N, I], the logit of every
item 1..I (column j is item j + 1). DIN: items [N, L], ages [N, L] float32 (days from each
history event to the request), candidates [N] int64 → logits [N]. The inputs are what
`recsmith.data.sequences.histories` builds from a log, offline or from the online store.
Fitted models (most-popular, LightGBM, the hybrid) have no network to export: a booster's
own file (model.lgb.txt) is its portable form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsmith.config.loader import load_experiment
from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.data.sequences import histories
from recsmith.errors import DataError
from recsmith.models.sequential.architectures import ARCHITECTURES
from recsmith.run_dir import RunDir
from recsmith.train.fitted import load_sequential_model


class NextItemGraph(nn.Module):
    inputs, outputs = ["items", "lengths"], ["scores"]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.score_all(self.model.user_vectors(items, lengths)),)


class DINGraph(nn.Module):
    inputs, outputs = ["items", "ages", "candidates"], ["logits"]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, ages: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.score_candidates(items, None, ages, candidates),)


class SequenceExport:
    """What `export_run` needs of a sequence run: the graph, its inputs on the test split, and
    PyTorch's outputs on them (the reference)."""

    def __init__(self, run: RunDir, dataset_dir: Path):
        cfg = load_experiment(run.config)
        seq = cfg.model.sequential
        if ARCHITECTURES.get(seq.architecture).fitted:
            raise DataError(f"{run.path}: a fitted '{seq.architecture}' model has no network to export "
                            "(a LightGBM booster's portable form is the run's model.lgb.txt)")
        if not run.ckpt_best.is_file():
            raise DataError(f"{run.path}: no ckpt_best.pt (the run has not finished a validation)")
        self.dataset = SequenceDataset.load(dataset_dir)
        self.max_length = seq.max_length
        model = load_sequential_model(run, cfg, self.dataset.log.num_items)
        self.graph = (DINGraph if seq.architecture == "din" else NextItemGraph)(model).eval()
        self.outputs = self.graph.outputs

    def export_graph(self) -> nn.Module:
        return self.graph

    def export_inputs(self, dataset_dir: Path, rows: int | None) -> tuple[np.ndarray, ...]:
        """The test split's histories (DIN: its candidate rows), the first `rows` of them."""
        log = self.dataset.log
        if isinstance(self.graph, DINGraph):
            candidates = self.dataset.candidates("test", ["event", "item_id"])
            events, items = candidates["event"][:rows], candidates["item_id"][:rows].astype(np.int64)
            history, _, ages = histories(log, events, self.max_length)
            return history, ages, items
        history, lengths, _ = histories(log, log.targets("test")[:rows], self.max_length)
        return history, lengths

    @torch.inference_mode()
    def predict_encoded(self, *arrays: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.graph(*(torch.from_numpy(a) for a in arrays))
        return {name: value.double().numpy() for name, value in zip(self.outputs, outputs)}
