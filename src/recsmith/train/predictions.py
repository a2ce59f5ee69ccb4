"""A run's test predictions, kept in its run dir (`predictions_test.npz`) so that
comparisons between runs (paired bootstrap intervals, DeLong's test) can be computed
later from run dirs alone, on exactly the rows and scores the metrics were computed on.
Next-item runs also keep each test user's target rank (`target_ranks_test.npz`), what
their top-K metrics (NDCG, HR, MRR) are computed from. Text classifiers keep their class
probabilities and true classes instead (`predictions_text_test.npz`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from recsmith.atomic import replace_atomically
from recsmith.tasks import TaskSpec

KEPT_COLUMNS = ("user", "conversion_if_clicked")  # GAUC groups; the synthetic counterfactual
RANKS_FILE = "target_ranks_test.npz"
TEXT_FILE = "predictions_text_test.npz"


@dataclass
class Predictions:
    probs: dict[str, np.ndarray]  # head → float32 probabilities, as the metrics saw them
    labels: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    tasks: dict[str, TaskSpec]
    dataset: str

    @property
    def rows(self) -> int:
        return len(next(iter(self.labels.values())))


def save_predictions(path: str | Path, probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     columns: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec], dataset: str) -> None:
    arrays = {f"prob__{head}": np.asarray(p, dtype=np.float32) for head, p in probs.items()}
    arrays.update({f"label__{name}": np.asarray(v) for name, v in labels.items()})
    arrays.update({f"column__{name}": np.asarray(columns[name]) for name in KEPT_COLUMNS if name in columns})
    meta = {"tasks": {name: spec.to_json() for name, spec in tasks.items()}, "dataset": dataset}
    arrays["meta"] = np.array(json.dumps(meta))
    _write_npz(path, arrays)


def _write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    replace_atomically(path, write)


def load_predictions(path: str | Path) -> Predictions:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        grouped: dict[str, dict[str, np.ndarray]] = {"prob": {}, "label": {}, "column": {}}
        for key in data.files:
            if "__" in key:
                kind, name = key.split("__", 1)
                grouped[kind][name] = data[key]
    tasks = {name: TaskSpec(**spec) for name, spec in meta["tasks"].items()}
    return Predictions({h: p.astype(np.float64) for h, p in grouped["prob"].items()}, grouped["label"],
                       grouped["column"], tasks, meta["dataset"])


@dataclass
class TargetRanks:
    ranks: np.ndarray  # [N] float64 1-based rank of each user's target, ties counted half
    users: np.ndarray  # [N] the user of each target (pairs two runs' ranks)
    dataset: str


def ranks_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RANKS_FILE


def save_target_ranks(path: str | Path, ranks: np.ndarray, users: np.ndarray, dataset: str) -> None:
    arrays = {"ranks": np.asarray(ranks, dtype=np.float64), "users": np.asarray(users),
              "meta": np.array(json.dumps({"dataset": dataset}))}
    _write_npz(path, arrays)


def load_target_ranks(path: str | Path) -> TargetRanks:
    with np.load(path, allow_pickle=False) as data:
        return TargetRanks(data["ranks"], data["users"], json.loads(str(data["meta"]))["dataset"])


@dataclass
class TextPredictions:
    """A text classifier's test scoring: what its accuracy, macro-F1, log loss and AUC were
    computed from, in test-row order (the same rows, in the same order, in every run of a
    chain: the split is seeded by data.seed)."""

    probabilities: np.ndarray  # [N, C] float64 class probabilities (saved as the float32 the metrics saw)
    labels: np.ndarray  # [N] int64 true class indices

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> int:
        return self.probabilities.shape[1]


def text_predictions_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TEXT_FILE


def save_text_predictions(run_dir: str | Path, probabilities: np.ndarray, labels: np.ndarray, dataset: str) -> None:
    """A text run's test probabilities [N, C] and labels [N] (atomically), with the prepared
    dataset they came from."""
    _write_npz(text_predictions_path(run_dir), {"probabilities": np.asarray(probabilities, np.float32),
                                                "labels": np.asarray(labels, np.int64),
                                                "dataset": np.array(str(dataset))})


def load_text_predictions(path: str | Path) -> TextPredictions:
    with np.load(path, allow_pickle=False) as data:
        return TextPredictions(data["probabilities"].astype(np.float64), data["labels"].astype(np.int64))
