"""Metrics of predicted probabilities: binary (log loss and calibration of a CTR-style
probability) and multi-class (a classifier's [N, C] probability rows: accuracy, F1 per
class and macro, log loss, ECE, AUC for two classes), its confusion matrix, a text report
and a PNG of the matrix, and paired tests of two classifiers on the same rows (McNemar's
exact test, a paired bootstrap interval of the accuracy or macro-F1 delta).

Conventions of the multi-class functions, as scikit-learn's with `zero_division=0`: the
predicted class is the argmax of a row (the first on a tie); a class with no predicted row
has precision 0, one with no true row recall 0, and F1 is 0 where precision + recall is 0.
Macro averages run over all C classes, present in the data or not.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from recsmith.atomic import replace_atomically
from recsmith.metrics.auc import auc
from recsmith.metrics.significance import ResampledMean, bootstrap_chunks, percentile_interval

EPS = 1e-7
CLASS_EPS = 1e-15  # multi-class log loss clip: scikit-learn's log_loss default before it used the dtype's epsilon
ECE_BINS = 15


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 − 1e-7]."""
    losses = row_logloss(labels, probs)
    return float(losses.mean()) if losses.size else float("nan")


def row_logloss(labels, probs) -> np.ndarray:
    """Each row's binary cross-entropy (probabilities clipped as in `logloss`)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def calibration(labels, probs) -> float:
    """Mean predicted probability / observed positive rate (1.0 is calibrated)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    return float(p.mean() / y.mean())


def class_key(name: str) -> str:
    """A class name as it appears in metric keys: lower-case ASCII letters and digits, each
    run of other characters one `_`, none at the ends ("Very Positive!" → "very_positive")."""
    key = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    if not key:
        raise ValueError(f"class name {name!r} has no letter or digit to name its metrics by")
    return key


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, float]:
    """A classifier's metrics on N rows of C classes, as one flat dict of floats.

    labels: int class indices [N]; probabilities: [N, C], rows summing to 1; classes: the C
    names, in column order. Keys: `accuracy`; `macro_f1` (F1 averaged over the C classes);
    `logloss` (mean −log of the true class's probability, clipped to [1e-15, 1 − 1e-15]);
    `ece` (see `expected_calibration_error`); `auc`, for C = 2 only (ROC AUC of column 1,
    ties counted one half, NaN when one class is missing); and per class
    `precision_<key>`, `recall_<key>`, `f1_<key>` with the key of `class_key`."""
    y, p = _checked(labels, probabilities, classes)
    keys = [class_key(name) for name in classes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"class names {list(classes)} give the same metric key twice: {keys}")
    matrix = confusion_matrix(y, p.argmax(axis=1), len(classes))
    precision, recall, f1, _ = per_class_scores(matrix)
    true_p = np.clip(p[np.arange(y.size), y], CLASS_EPS, 1.0 - CLASS_EPS)
    result = {
        "accuracy": float(np.trace(matrix) / y.size),
        "macro_f1": float(f1.mean()),
        "logloss": float(-np.log(true_p).mean()),
        "ece": expected_calibration_error(y, p),
    }
    if len(classes) == 2:
        result["auc"] = auc(y, p[:, 1])
    for k, key in enumerate(keys):
        result[f"precision_{key}"] = float(precision[k])
        result[f"recall_{key}"] = float(recall[k])
        result[f"f1_{key}"] = float(f1[k])
    return result


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence c_i = max_k p_ik: the rows go into `bins` equal-width
    bins of (0, 1] (bin m holds m/bins < c ≤ (m+1)/bins), and ECE = Σ_m (n_m / N) ·
    |accuracy_m − mean confidence_m| over the bins, where accuracy_m is the share of bin m's
    rows whose argmax class is the true one. 0 is calibrated; empty bins add nothing."""
    y, p = _checked(labels, probabilities, range(np.shape(probabilities)[-1]))
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence, side="left")
    # (n_m / N) · |hits_m / n_m − confidence sum_m / n_m| = |hits_m − confidence sum_m| / N
    hits = np.bincount(which, weights=correct, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    return float(np.abs(hits - confidence_sum).sum() / y.size)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts: entry [i, j] is the rows of true class i predicted as class j."""
    y, guess = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    if y.shape != guess.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {guess.size}")
    for name, values in (("labels", y), ("predictions", guess)):
        if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0
                            or values.max() >= num_classes):
            raise ValueError(f"{name} must be integer class indices in [0, {num_classes})")
    cells = np.bincount(y.astype(np.int64) * num_classes + guess.astype(np.int64), minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes).astype(np.int64)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1, support) per class from a confusion matrix, each [C]; 0.0
    where a class has no predicted row (precision), no true row (recall), or neither hit."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    return (_ratio(hits, predicted), _ratio(hits, support), _ratio(2.0 * hits, support + predicted),
            support.astype(np.int64))


def classification_report_text(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> str:
    """A plain-text report in the layout of scikit-learn's classification_report: precision,
    recall, F1 and support per class, then accuracy and the macro and support-weighted
    averages; then the confusion matrix, true classes down, predicted classes across."""
    y, p = _checked(labels, probabilities, classes)
    names = [str(name) for name in classes]
    matrix = confusion_matrix(y, p.argmax(axis=1), len(names))
    precision, recall, f1, support = per_class_scores(matrix)
    width = max(len("weighted avg"), *(len(name) for name in names))
    columns = ("precision", "recall", "f1-score", "support")
    lines = [" " * width + "".join(f"{c:>11}" for c in columns), ""]
    for name, row in zip(names, zip(precision, recall, f1, support)):
        lines.append(_report_row(name, width, *row))
    lines += ["", f"{'accuracy':>{width}}" + " " * 22 + f"{np.trace(matrix) / y.size:>11.4f}{y.size:>11d}"]
    scores = np.vstack([precision, recall, f1])
    lines.append(_report_row("macro avg", width, *scores.mean(axis=1), y.size))
    lines.append(_report_row("weighted avg", width, *(scores @ support / y.size), y.size))
    cell = max(6, *(len(name) for name in names), len(str(matrix.max())))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * width + "".join(f"  {name:>{cell}}" for name in names)]
    for name, counts in zip(names, matrix):
        lines.append(f"{name:>{width}}" + "".join(f"  {count:>{cell}d}" for count in counts))
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """The confusion matrix as a PNG at `path` (written atomically): true classes down,
    predicted across, each cell's count and its share of the true class's rows, shaded by
    that share. Agg canvas of its own: no pyplot, so no global backend or open figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    size = len(classes)
    if counts.shape != (size, size):
        raise ValueError(f"a confusion matrix of {size} classes is {size}×{size}, not {counts.shape}")
    shares = _ratio(counts.astype(np.float64), counts.sum(axis=1, keepdims=True))
    fig = Figure(figsize=(1.1 * size + 3.0, 0.9 * size + 2.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(size), [str(c) for c in classes], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(size), [str(c) for c in classes], fontsize=8)
    for i in range(size):
        for j in range(size):
            ax.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test of two classifiers on the same rows, from whether each got each row
    right. a_only = rows only a got right, b_only = rows only b got right; under the null
    each discordant row is a fair coin, so the exact two-sided p-value is
    min(1, 2 · P(X ≤ min(a_only, b_only))) for X ~ Binomial(a_only + b_only, ½).
    `statistic` is the continuity-corrected chi-square (|a_only − b_only| − 1)² /
    (a_only + b_only), 0.0 (and p = 1) when no row is discordant."""
    a, b = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two classifiers are scored on different rows: {a.size} vs {b.size}")
    a_only, b_only = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    discordant = a_only + b_only
    if discordant == 0:
        return {"a_only": 0, "b_only": 0, "p_value": 1.0, "statistic": 0.0}
    return {"a_only": a_only, "b_only": b_only,
            "p_value": min(1.0, 2.0 * _fair_coin_cdf(min(a_only, b_only), discordant)),
            "statistic": (abs(a_only - b_only) - 1) ** 2 / discordant}


def paired_bootstrap_delta(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metric: str = "accuracy",
                           samples: int = 1000, seed: int = 0, num_classes: int | None = None) -> dict:
    """metric(pred_b) − metric(pred_a) on the rows, and its 95% percentile interval over
    `samples` bootstrap resamples of the rows, both models scored on the same resamples
    (`significance.bootstrap_chunks`, so memory stays at a block of resamples × rows).
    metric: "accuracy" or "macro_f1" (over `num_classes` classes; by default
    1 + the largest class index in labels and predictions)."""
    y, a, b = (np.asarray(v).ravel() for v in (labels, pred_a, pred_b))
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"labels and predictions differ in length: {y.size}, {a.size}, {b.size}")
    if y.size == 0:
        raise ValueError("no rows to compare the two classifiers on")
    if metric == "accuracy":
        score = ResampledMean((b == y).astype(np.float64) - (a == y))
    elif metric == "macro_f1":
        classes = num_classes or int(max(y.max(), a.max(), b.max())) + 1
        f1_a, f1_b = (ResampledMacroF1(y, guess, classes) for guess in (a, b))

        def score(counts: np.ndarray) -> np.ndarray:
            return f1_b(counts) - f1_a(counts)
    else:
        raise ValueError(f"metric must be 'accuracy' or 'macro_f1', not {metric!r}")
    deltas = np.concatenate([score(counts) for counts in bootstrap_chunks(y.size, samples, seed)])
    low, high = percentile_interval(deltas)
    return {"delta": float(score(np.ones((1, y.size)))[0]), "low": low, "high": high}


class ResampledMacroF1:
    """Macro F1 of resampled rows: `(counts [R, N]) → [R]`, a resample's confusion counts
    being count-weighted sums of the rows' one-hot hits, true classes and predictions."""

    def __init__(self, labels: np.ndarray, predicted: np.ndarray, num_classes: int):
        for values in (labels, predicted):
            if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= num_classes:
                raise ValueError(f"labels and predictions must be integer class indices in [0, {num_classes})")
        truth = np.eye(num_classes)[labels]
        guess = np.eye(num_classes)[predicted]
        self.columns = np.hstack([truth * guess, truth, guess])  # [N, 3C]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        hits, support, predicted = np.split(counts @ self.columns, 3, axis=1)
        return _ratio(2.0 * hits, support + predicted).mean(axis=1)


def _checked(labels, probabilities, classes) -> tuple[np.ndarray, np.ndarray]:
    """Labels [N] and probabilities [N, C] as int64 and float64, or a ValueError that says
    what is wrong with them."""
    y, p = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    size = len(classes)
    if size < 2 or p.ndim != 2 or p.shape[1] != size:
        raise ValueError(f"probabilities must be [N, {size}] for {size} classes (at least 2), not {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be [N] = [{p.shape[0]}], not {y.shape}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= size:
        raise ValueError(f"labels must be integer class indices in [0, {size})")
    if not np.isfinite(p).all() or p.min() < 0.0 or np.abs(p.sum(axis=1) - 1.0).max() > 1e-3:
        raise ValueError("probabilities must be rows of C probabilities summing to 1 (softmax the logits)")
    return y.astype(np.int64), p


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0 (zero_division=0)."""
    out = np.zeros(np.broadcast_shapes(np.shape(numerator), np.shape(denominator)))
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _report_row(name: str, width: int, precision: float, recall: float, f1: float, support: int) -> str:
    return f"{name:>{width}}{precision:>11.4f}{recall:>11.4f}{f1:>11.4f}{support:>11d}"


def _fair_coin_cdf(k: int, n: int) -> float:
    """P(X ≤ k) for X ~ Binomial(n, ½), summed in log space (no overflow for large n)."""
    log_n = math.lgamma(n + 1) - n * math.log(2.0)
    log_terms = np.array([log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)])
    top = log_terms.max()
    return float(math.exp(top) * np.exp(log_terms - top).sum())
