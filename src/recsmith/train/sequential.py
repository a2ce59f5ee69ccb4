"""The sequential family's training setup: the same Trainer, run dir and checkpoints as the
ranking family; only the inputs, the loss and the evaluation differ."""

from __future__ import annotations

import functools

import numpy as np
import torch

from recsmith.data.batches import TrainStream
from recsmith.data.sequence_dataset import LIKE, SequenceDataset
from recsmith.metrics.ranking import CTR_STYLE
from recsmith.models.next_item import build_sequential_model
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.diagnostics import GateStats
from recsmith.train.evaluate_sequential import (
    EvalSplit,
    TorchScorer,
    evaluate_sequential,
)
from recsmith.train.losses import MultiTaskLoss, NextItemLoss
from recsmith.train.predictions import ranks_path, save_predictions, save_target_ranks
from recsmith.train.sequential_data import CandidateData, WindowData


def protocol_label(cfg) -> dict:
    """How the metrics were computed, written beside them."""
    k = cfg.topk
    ranking = ("full ranking over all items" if k.protocol == "full"
               else f"target among {k.sampled_negatives} sampled never-rated items (seed {cfg.data.seed})")
    return {"topk": f"{ranking}; history items {'excluded' if k.exclude_history else 'not excluded'}",
            "ctr_style": "candidate rows (true next item, like = rating ≥ positive_rating, plus sampled "
                         "never-rated items as 0); logloss only for BCE-trained models",
            "split": "leave-last-out by time", "objective": cfg.model.sequential.objective,
            "max_length": cfg.model.sequential.max_length}


def split_scorer(model, dataset: SequenceDataset, split: EvalSplit, cfg, device) -> TorchScorer:
    events = np.concatenate([split.events, split.rows["event"]])
    seq = cfg.model.sequential
    return TorchScorer(model, dataset.log, events, seq.max_length, seq.objective, device)


class SequentialSetup:
    """Model, loss, train stream and evaluations of one sequential run."""

    def __init__(self, cfg, dataset_dir, device: torch.device):
        self.cfg, self.device = cfg, device
        self.dataset = SequenceDataset.load(dataset_dir)
        seq = cfg.model.sequential
        self.model = build_sequential_model(self.dataset.log.num_items, cfg).to(device)
        if seq.objective == "softmax":
            self.train, self.loss_fn, label = WindowData(self.dataset.log, seq.max_length), NextItemLoss(), "next_item"
        else:
            self.train, self.loss_fn, label = CandidateData(self.dataset, "train", seq.max_length), MultiTaskLoss([LIKE]), "like"
        self.stream = TrainStream(self.train, cfg.data.batch_size, seed=cfg.runtime.seed, label=label)
        self.valid = EvalSplit.build(self.dataset, "valid", cfg.topk.sampled_negatives, cfg.data.seed)
        self.valid_scorer = split_scorer(self.model, self.dataset, self.valid, cfg, device)
        self.key = cfg.runtime.best_selection.primary_key

    def describe(self) -> str:
        what = (f"{len(self.train)} windows ({self.train.num_targets} targets)" if isinstance(self.train, WindowData)
                else f"{len(self.train)} candidate rows")
        return f"{what}, {len(self.valid.events)} valid users"

    def evaluate_valid(self, model) -> tuple[dict, GateStats]:
        metrics = evaluate_sequential(self.valid_scorer, self.valid, self.cfg.topk, with_topk=self.key not in CTR_STYLE)
        metrics["auc_primary"] = metrics[self.key]  # the selection metric, under the summary's column name
        return metrics, GateStats()

    def final_evaluation(self, run, dataset_dir) -> dict:
        """The best checkpoint on the test split, both metric families, labelled."""
        best = load_checkpoint(run.ckpt_best)
        self.model.load_state_dict(best["model"])
        test = EvalSplit.build(self.dataset, "test", self.cfg.topk.sampled_negatives, self.cfg.data.seed)
        scorer = split_scorer(self.model, self.dataset, test, self.cfg, self.device)
        keep = functools.partial(keep_candidate_scores, run, scorer.objective, test, dataset_dir)
        metrics = evaluate_sequential(scorer, test, self.cfg.topk, keep_scores=keep)
        metrics["auc_primary"] = metrics[self.key]
        return {"test": metrics, "best_step": best["step"], "test_rows": len(test.events),
                "protocol": protocol_label(self.cfg)}


def keep_candidate_scores(run, objective: str, split: EvalSplit, dataset_dir, scores: np.ndarray,
                          ranks: np.ndarray | None) -> None:
    """The candidate rows' scores as predictions_test.npz, so chains compare AUC / GAUC (and,
    for BCE models, LogLoss) with intervals. BCE models keep their probability; other scores
    (softmax logits, counts) are kept as their rank among the rows scaled into (0, 1): a
    sigmoid would round large scores to the same float32 1.0 and create ties AUC then reads.
    Each user's target rank goes to target_ranks_test.npz, so top-K deltas get intervals too."""
    rows = split.rows
    if objective == "bce":
        kept = 1.0 / (1.0 + np.exp(-scores))
    else:
        distinct, rank = np.unique(scores, return_inverse=True)  # ties stay ties
        kept = (rank + 1.0) / (len(distinct) + 1.0)
    save_predictions(run.predictions, {"like": kept}, {"like": rows["like"]},
                     {"user": split.user_of_row}, {"like": LIKE}, str(dataset_dir))
    if ranks is not None:
        save_target_ranks(ranks_path(run.path), ranks, split.user_of_target, str(dataset_dir))
