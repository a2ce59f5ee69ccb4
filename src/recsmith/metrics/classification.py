"""Log loss and calibration of predicted probabilities."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


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
