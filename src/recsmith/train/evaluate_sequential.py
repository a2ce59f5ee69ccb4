"""Evaluation of next-item predictions, both families of metrics, always labelled.

Top-K: the target item's rank among all items (protocol "full", the default) or among
`sampled_negatives` items the user never rated (protocol "sampled", seeded); optionally
without the items already in the user's visible history. CTR-style: AUC, GAUC and (for
models trained with BCE) LogLoss on the split's candidate rows, like = rating ≥ 4.

A model is seen through a scorer: `score(events [N], candidates [N, C] or None) -> [N, C]`
(None: every item 1..I, in id order). Torch models, LightGBM and most-popular all fit it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.data.sequences import InteractionLog
from recsmith.metrics.auc import auc, gauc
from recsmith.metrics.classification import logloss
from recsmith.metrics.ranking import target_ranks, topk_metrics
from recsmith.train.sequential_data import EventHistories


class Scorer(Protocol):
    objective: str  # "softmax" or "bce": LogLoss is only defined for bce
    has_loss: bool  # softmax scores that are logits (cross-entropy reported as `loss`)

    def score(self, events: np.ndarray, candidates: np.ndarray | None) -> torch.Tensor: ...


@dataclass
class EvalSplit:
    """What evaluating one split needs, built once per run."""

    events: np.ndarray  # [N] one target event per user
    targets: np.ndarray  # [N] the true next item
    sampled: np.ndarray  # [N, S] never-rated items for the sampled protocol
    excluded: tuple[np.ndarray, np.ndarray]  # (row, item) pairs of visible-history items
    rows: dict[str, np.ndarray]  # candidate rows: event, item_id, like
    user_of_row: np.ndarray
    user_of_target: np.ndarray  # [N] whose target each event is (pairs two runs' per-user ranks)

    @classmethod
    def build(cls, dataset: SequenceDataset, split: str, sampled_negatives: int, seed: int) -> "EvalSplit":
        from recsmith.data.sequences import sample_unrated

        log = dataset.log
        events = log.targets(split)
        rng = np.random.default_rng(seed + (1 if split == "valid" else 2))
        start, stop = log.user_start[log.user[events]], log.prefix_end[events]
        counts = stop - start
        row = np.repeat(np.arange(len(events)), counts)
        position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(start, counts)
        item = log.item[position]
        keep = item != log.item[events][row]  # never exclude the target itself
        rows = dataset.candidates(split, ["event", "item_id", "like"])
        return cls(events, log.item[events], sample_unrated(log, log.user[events], sampled_negatives, rng),
                   (row[keep], item[keep]), rows, log.user[rows["event"]], log.user[events])


@torch.no_grad()
def evaluate_sequential(scorer: Scorer, split: EvalSplit, topk_cfg, with_topk: bool = True,
                        keep_scores: Callable[[np.ndarray, np.ndarray | None], None] | None = None) -> dict[str, float]:
    """All metrics of one split (see the module docstring); keys as in
    recsmith.metrics.ranking.sequential_metric_names, plus `loss`. `keep_scores` receives
    what the metrics were computed from (to save them): the candidate rows' scores (the
    CTR-style metrics) and each target's rank (the top-K metrics; None without them)."""
    out: dict[str, float] = {}
    full, ranks = None, None
    if scorer.objective == "softmax" or (with_topk and topk_cfg.protocol == "full"):
        full = scorer.score(split.events, None).double()  # [N, I]: items 1..I
    target_col = torch.from_numpy(split.targets - 1)
    if scorer.objective == "softmax" and scorer.has_loss:
        out["loss"] = float(F.cross_entropy(full, target_col))
    if with_topk and topk_cfg.protocol == "full":
        excluded = None
        if topk_cfg.exclude_history:
            excluded = torch.zeros(full.shape, dtype=torch.bool)
            excluded[torch.from_numpy(split.excluded[0]), torch.from_numpy(split.excluded[1] - 1)] = True
        ranks = target_ranks(full, target_col, excluded).numpy()
    elif with_topk:  # the target in column 0 among the sampled never-rated items
        candidates = np.concatenate([split.targets[:, None], split.sampled], axis=1)
        scores = (full.gather(1, torch.from_numpy(candidates - 1)) if full is not None
                  else scorer.score(split.events, candidates).double())
        ranks = target_ranks(scores, torch.zeros(len(candidates), dtype=torch.long)).numpy()
    if ranks is not None:
        out.update(topk_metrics(ranks, topk_cfg.cutoffs))
    rows = split.rows
    scores = scorer.score(rows["event"], rows["item_id"][:, None]).double().view(-1).numpy()
    if keep_scores is not None:
        keep_scores(scores, ranks)
    like = rows["like"].astype(np.float64)
    out["auc_like"] = auc(like, scores)
    out["gauc_like"] = gauc(like, scores, split.user_of_row)
    if scorer.objective == "bce":
        probs = 1.0 / (1.0 + np.exp(-scores))
        out["logloss_like"] = logloss(like, probs)
        out.setdefault("loss", out["logloss_like"])
    else:
        out["logloss_like"] = float("nan")  # a softmax score is not a click probability
    return {k: float(v) if np.isfinite(v) else float("nan") for k, v in out.items()}


def candidate_matrix(rows: int, candidates: np.ndarray | None, num_items: int) -> np.ndarray:
    """[rows, C] int64 candidates; None means every item 1..I (a broadcast view, no copy)."""
    if candidates is None:
        return np.broadcast_to(np.arange(1, num_items + 1, dtype=np.int64), (rows, num_items))
    return np.asarray(candidates, np.int64)


class TorchScorer:
    """A trained NextItemModel or DINRanker behind the Scorer interface."""

    has_loss = True

    def __init__(self, model, log: InteractionLog, events: np.ndarray, max_length: int, objective: str,
                 device: torch.device, batch_rows: int = 8192):
        """`log` is a dataset's, or one request's (recsmith.online.features.RequestView)."""
        self.model, self.device, self.objective = model, device, objective
        self.history = EventHistories(log, events, max_length)
        self.num_items, self.batch_rows = log.num_items, batch_rows

    @torch.no_grad()
    def score(self, events: np.ndarray, candidates: np.ndarray | None) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            rows = self.history.rows(events)
            if candidates is None and hasattr(self.model, "score_all"):
                return self._chunks(rows, lambda r: self.model.score_all(self._vectors(r)))
            cand = torch.from_numpy(np.array(candidate_matrix(len(events), candidates, self.num_items)))
            per_chunk = max(1, self.batch_rows // cand.shape[1])
            parts = []
            for start in range(0, len(rows), per_chunk):
                r, c = rows[start:start + per_chunk], cand[start:start + per_chunk]
                n, k = c.shape
                h = self.history
                s = self.model.score_candidates(
                    h.items[r].repeat_interleave(k, 0).to(self.device), h.lengths[r].repeat_interleave(k, 0).to(self.device),
                    h.ages[r].repeat_interleave(k, 0).to(self.device), c.reshape(-1).to(self.device))
                parts.append(s.view(n, k).cpu())
            return torch.cat(parts)
        finally:
            self.model.train(was_training)

    def _vectors(self, rows: torch.Tensor) -> torch.Tensor:
        h = self.history
        return self.model.user_vectors(h.items[rows].to(self.device), h.lengths[rows].to(self.device))

    def _chunks(self, rows: torch.Tensor, fn) -> torch.Tensor:
        return torch.cat([fn(rows[s:s + 1024]).cpu() for s in range(0, len(rows), 1024)])
