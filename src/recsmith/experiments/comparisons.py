"""Is a chain's delta real? Paired bootstrap intervals and DeLong's test for each
comparison, computed from the runs' saved test predictions (`predictions_test.npz`) and,
for top-K metrics, their saved per-user target ranks (`target_ranks_test.npz`).

Every run of a chain is scored on the same test rows, so a comparison is paired: each
bootstrap resample draws the same units for both models. The unit is a test row for AUC
and LogLoss, a user (with all their rows) for GAUC, and a user's target for NDCG, HR,
Precision and MRR (one target per user: each user's value of the metric is resampled).
DeLong's test uses the correlation of the two AUCs on those rows; it exists for AUCs only,
so GAUC, LogLoss and top-K deltas have no p-value (reported as n/a). A delta is
"significant" when its 95% interval excludes zero and, for an AUC, DeLong's p-value is
below 0.05 too; otherwise it is "within noise".

Text classifiers save their class probabilities instead (`predictions_text_test.npz`);
a comparison or interval involving one goes by TEXT_KINDS: `accuracy`, `macro_f1`,
`logloss` and (two classes) `auc`, each resampled by test row on the same resample stream
as the other row metrics. Accuracy's p-value is McNemar's exact test, AUC's DeLong's;
macro-F1 and log loss have none. The verdict rule is the one above, with that p-value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from recsmith.experiments.columns import TOPK_FAMILIES, split_name
from recsmith.metrics.auc import auc
from recsmith.metrics.classification import (CLASS_EPS, ResampledMacroF1, classification_metrics, mcnemar,
                                             row_logloss)
from recsmith.metrics.funnel import target_rows
from recsmith.metrics.ranking import per_target
from recsmith.metrics.significance import (ResampledAUC, ResampledGAUC, ResampledMean, bootstrap_chunks,
                                           delong, percentile_interval)
from recsmith.run_dir import RunDir
from recsmith.train.predictions import (Predictions, TargetRanks, TextPredictions, load_predictions,
                                        load_target_ranks, load_text_predictions, ranks_path, text_predictions_path)

LEVEL = 0.95
ALPHA = 0.05
RESAMPLES = 1000
ROW_KINDS = ("auc", "gauc", "logloss")
KINDS = (*ROW_KINDS, *TOPK_FAMILIES)
UNIT_SEED = {"rows": 0, "groups": 1, "targets": 2}  # each unit's resamples come from their own stream


@dataclass(frozen=True)
class TextKind:
    """How one metric of a text classifier's probabilities [N, C] and labels [N] is
    resampled by test row (`resampled(labels, probs)(counts [R, N])` → [R]) and tested:
    `p_value(labels, probs_a, probs_b)`, by the test named `test` (None: no p-value)."""

    resampled: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]
    p_value: Callable[[np.ndarray, np.ndarray, np.ndarray], float] | None = None
    test: str | None = None
    classes: int | None = None  # the only number of classes it exists for (None: any)


def _correct(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return probs.argmax(axis=1) == labels


def _true_class_logloss(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each row's −log of its true class's probability, clipped as classification_metrics does."""
    return -np.log(np.clip(probs[np.arange(labels.size), labels], CLASS_EPS, 1.0 - CLASS_EPS))


TEXT_KINDS = {
    "accuracy": TextKind(lambda y, p: ResampledMean(_correct(y, p)),
                         lambda y, a, b: mcnemar(_correct(y, a), _correct(y, b))["p_value"], "McNemar"),
    "macro_f1": TextKind(lambda y, p: ResampledMacroF1(y, p.argmax(axis=1), p.shape[1])),
    "auc": TextKind(lambda y, p: ResampledAUC(y, p[:, 1]), lambda y, a, b: delong(y, a[:, 1], b[:, 1]).p_value,
                    "DeLong", classes=2),
    "logloss": TextKind(lambda y, p: ResampledMean(_true_class_logloss(y, p))),
}


def p_value_test(metric: str) -> str | None:
    """The test a delta's p-value comes from (for the metrics that have one)."""
    return TEXT_KINDS[metric].test if metric in TEXT_KINDS else "DeLong"


@dataclass(frozen=True)
class DeltaStat:
    metric: str
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float | None  # DeLong's for AUCs, McNemar's for a text classifier's accuracy (p_value_test)
    verdict: str  # "significant" or "within noise"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RunArrays:
    """What a run saved of its test scoring (any may be missing; a text classifier saves
    only `text`)."""

    preds: Predictions | None
    ranks: TargetRanks | None
    text: TextPredictions | None = None

    @classmethod
    def load(cls, run: RunDir) -> "RunArrays":
        ranks, text = ranks_path(run.path), text_predictions_path(run.path)
        return cls(load_predictions(run.predictions) if run.predictions.is_file() else None,
                   load_target_ranks(ranks) if ranks.is_file() else None,
                   load_text_predictions(text) if text.is_file() else None)


def split_metric(metric: str) -> tuple[str, str]:
    """("auc", "ctr") from "auc_ctr", ("ndcg", "10") from "ndcg_10", ("mrr", "") from
    "mrr"; auc_cvr_masked is auc_cvr (the same rows)."""
    kind, target = split_name(metric)
    if kind in TOPK_FAMILIES:
        return kind, target
    if kind not in ROW_KINDS:
        supported = ", ".join([k + "_*" for k in KINDS if k != "mrr"] + ["mrr"])
        raise ValueError(f"no interval for metric '{metric}' (supported: {supported})")
    return kind, target.removesuffix("_masked")


class _Resampled:
    """A statistic's value on each bootstrap resample of its unit, gathered block by block."""

    def __init__(self):
        self.samples: list[np.ndarray] = []
        self.subset = None  # the test rows a row metric is computed on (None: all)

    def add(self, counts: np.ndarray) -> None:
        self.samples.append(self.resampled(counts if self.subset is None else counts[:, self.subset]))

    def distribution(self) -> np.ndarray:
        return np.concatenate(self.samples)


class _Scored(_Resampled):
    """One run's values for one metric, and its value on each bootstrap resample of its unit."""

    def __init__(self, metric: str, arrays: RunArrays, group_ids: np.ndarray | None):
        super().__init__()
        self.kind, target = split_metric(metric)
        if self.kind in TOPK_FAMILIES:
            self.unit, self.resampled = "targets", ResampledMean(per_target(arrays.ranks.ranks, metric))
            return
        preds = arrays.preds
        y, p, rows = target_rows(target, preds.probs, preds.labels, preds.columns, preds.tasks)
        kept = np.flatnonzero(rows) if rows is not None else None
        if kept is not None:
            y, p = y[kept], p[kept]
        self.y, self.p = y, p
        if self.kind == "gauc":  # resampled by user: a drawn user brings all their rows
            users = preds.columns["user"] if kept is None else preds.columns["user"][kept]
            self.unit, self.resampled = "groups", ResampledGAUC(y, p, users, group_ids)
            return
        self.unit, self.subset = "rows", kept
        self.resampled = ResampledAUC(y, p) if self.kind == "auc" else ResampledMean(row_logloss(y, p))

    def point(self) -> float:
        if self.kind == "auc":
            return auc(self.y, self.p)
        if self.kind == "gauc":
            gauc_ = self.resampled
            return float(np.average(gauc_.aucs, weights=gauc_.sizes)) if gauc_.aucs.size else float("nan")
        return float(self.resampled.values.mean())

    def p_value(self, other: "_Scored") -> float | None:
        return delong(self.y, self.p, other.p).p_value if self.kind == "auc" else None


class _TextScored(_Resampled):
    """A text classifier's value of one TEXT_KINDS metric (as classification_metrics gives
    it: the run's eval.json number), and its value on each resample of the test rows."""

    unit = "rows"

    def __init__(self, metric: str, text: TextPredictions):
        super().__init__()
        self.kind, self.text = TEXT_KINDS[metric], text
        if self.kind.classes not in (None, text.classes):
            raise LookupError(f"no interval for '{metric}': it exists for {self.kind.classes} classes only, "
                              f"these runs have {text.classes}")
        names = [str(k) for k in range(text.classes)]  # the metric's value does not depend on the names
        self.value = classification_metrics(text.labels, text.probabilities, names)[metric]
        self.resampled = self.kind.resampled(text.labels, text.probabilities)

    def point(self) -> float:
        return self.value

    def p_value(self, other: "_TextScored") -> float | None:
        test = self.kind.p_value
        return None if test is None else test(self.text.labels, self.text.probabilities, other.text.probabilities)


def _bootstrap(items: list[_Scored], size: int, resamples: int, seed: int) -> None:
    """Score every item on the same resamples of `size` units."""
    for counts in bootstrap_chunks(size, resamples, seed):
        for item in items:
            item.add(counts)


def _scorers(metric: str, exp_ids, arrays: dict[str, RunArrays], scored: dict, streams: dict) -> None:
    """Build the runs' scorers of one metric, filed under the resample stream they share."""
    for exp_id in exp_ids:
        if (exp_id, metric) in scored:
            continue
        mine = arrays[exp_id]
        item, key = _text_scorer(metric, mine.text) if _is_text(mine) else _scorer(metric, mine)
        scored[(exp_id, metric)] = item
        streams.setdefault(key, []).append(item)


def _scorer(metric: str, mine: RunArrays) -> tuple[_Scored, tuple]:
    kind = split_metric(metric)[0]
    group_ids = None
    if kind == "gauc":
        if "user" not in mine.preds.columns:
            raise LookupError("no user column for GAUC")
        group_ids = np.unique(mine.preds.columns["user"])
    item = _Scored(metric, mine, group_ids)
    if item.unit == "targets":
        return item, (mine.ranks.dataset, "targets", len(mine.ranks.ranks))
    size = mine.preds.rows if item.unit == "rows" else group_ids.size
    return item, (mine.preds.dataset, item.unit, size)


def _text_scorer(metric: str, text: TextPredictions) -> tuple[_TextScored, tuple]:
    return _TextScored(metric, text), ("text", "rows", text.rows)


def comparison_stats(runs: dict[str, RunDir], comparisons, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict[tuple[str, str, str], DeltaStat | str]:
    """{(baseline, candidate, metric): DeltaStat, or the reason there is none}, for every
    metric of every comparison; `runs` maps experiment ids to run dirs. The point values
    are recomputed from the saved predictions: the same numbers as the runs' eval.json."""
    wanted = {(c.baseline, c.candidate, m) for c in comparisons for m in c.metrics}
    arrays = {e: RunArrays.load(runs[e]) if e in runs else RunArrays(None, None)
              for e in {e for b, c, _ in wanted for e in (b, c)}}
    results: dict[tuple[str, str, str], DeltaStat | str] = {}
    scored: dict[tuple[str, str], _Scored] = {}
    streams: dict[tuple, list[_Scored]] = {}
    pairs = []
    for base, cand, metric in sorted(wanted):
        reason = _unpairable(metric, arrays[base], arrays[cand], base, cand)
        if reason is None:
            try:
                _scorers(metric, (base, cand), arrays, scored, streams)
            except KeyError as exc:  # a metric name whose target these runs do not have
                reason = f"no interval for '{metric}': these runs have no {exc}"
            except LookupError as exc:
                reason = str(exc)
        if reason:
            results[(base, cand, metric)] = reason
        else:
            pairs.append((base, cand, metric))
    for (_, unit, size), items in streams.items():
        _bootstrap(items, size, resamples, seed + UNIT_SEED[unit])
    for base, cand, metric in pairs:
        a, b = scored[(base, metric)], scored[(cand, metric)]
        low, high = percentile_interval(b.distribution() - a.distribution(), LEVEL)
        p_value = a.p_value(b)
        point_a, point_b = a.point(), b.point()
        excludes_zero = low > 0 or high < 0
        significant = excludes_zero and (p_value is None or p_value < ALPHA)
        results[(base, cand, metric)] = DeltaStat(metric, point_a, point_b, point_b - point_a, low, high, p_value,
                                                  "significant" if significant else "within noise")
    return results


def run_intervals(arrays: RunArrays, metrics: list[str], resamples: int,
                  seed: int = 0) -> dict[str, tuple[float, float]]:
    """{metric: 95% bootstrap interval} of one run's own test metrics, for those of
    `metrics` its saved predictions and ranks can give (resampling the same units as the
    comparisons do)."""
    scored: dict[tuple[str, str], _Scored] = {}
    streams: dict[tuple, list[_Scored]] = {}
    for metric in metrics:
        try:
            if _missing(metric, arrays, _is_text(arrays)) is None:
                _scorers(metric, ("run",), {"run": arrays}, scored, streams)
        except (ValueError, LookupError):
            continue  # no interval for this metric (calibration, loss) or its target is not saved
    for (_, unit, size), items in streams.items():
        _bootstrap(items, size, resamples, seed + UNIT_SEED[unit])
    return {metric: percentile_interval(item.distribution(), LEVEL) for (_, metric), item in scored.items()}


def _is_text(*arrays: RunArrays) -> bool:
    """Whether a run (a pair: either run) is a text classifier's, whose metrics are TEXT_KINDS."""
    return any(a.text is not None for a in arrays)


def _missing(metric: str, arrays: RunArrays, text: bool) -> str | None:
    """Which saved file a metric needs and this run lacks (text: a text classifier's metric)."""
    if text:
        if metric not in TEXT_KINDS:
            raise ValueError(f"no interval for metric '{metric}' of a text classifier "
                             f"(supported: {', '.join(TEXT_KINDS)})")
        return None if arrays.text is not None else "text predictions"
    if split_metric(metric)[0] in TOPK_FAMILIES:
        return None if arrays.ranks is not None else "per-user target ranks"
    return None if arrays.preds is not None else "test predictions"


def _unpairable(metric: str, a: RunArrays, b: RunArrays, base: str, cand: str) -> str | None:
    text = _is_text(a, b)
    try:
        needs = [(e, _missing(metric, arr, text)) for e, arr in ((base, a), (cand, b))]
    except ValueError as exc:
        return str(exc)
    missing = [e for e, what in needs if what]
    if missing:
        return f"no saved {needs[0][1] or needs[1][1]} for {', '.join(missing)}"
    if text:
        same = a.text.probabilities.shape == b.text.probabilities.shape and np.array_equal(a.text.labels,
                                                                                          b.text.labels)
    elif split_metric(metric)[0] in TOPK_FAMILIES:
        same = a.ranks.dataset == b.ranks.dataset and np.array_equal(a.ranks.users, b.ranks.users)
    else:
        same = a.preds.dataset == b.preds.dataset and a.preds.rows == b.preds.rows and all(
            np.array_equal(a.preds.labels[k], b.preds.labels.get(k)) for k in a.preds.labels)
    return None if same else f"{base} and {cand} were tested on different rows"
