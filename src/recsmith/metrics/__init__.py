"""Pure metric functions on numpy arrays, checked against scikit-learn and brute force."""

from recsmith.metrics.auc import auc, gauc
from recsmith.metrics.classification import calibration, logloss

__all__ = ["auc", "gauc", "calibration", "logloss"]
