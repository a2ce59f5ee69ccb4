"""Explain one LightGBM prediction: SHAP contributions (LightGBM's own `pred_contrib`, which
sum with the bias to the raw score) and a tree's decision path in plain words."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Explanation:
    raw_score: float  # log-odds
    probability: float
    bias: float  # the expected raw score (SHAP's base value)
    contributions: list[tuple[str, float, float]]  # (feature, value, contribution), largest |contribution| first
    path: list[str]  # the first tree's decisions, in words
    leaf_value: float
    trees: int


def explain_row(booster, row: np.ndarray, names: list[str]) -> Explanation:
    """row [F] → its Explanation. SHAP values + bias equal the raw score (checked in tests)."""
    x = row.reshape(1, -1).astype(np.float64)
    raw = float(booster.predict(x, raw_score=True)[0])
    contrib = booster.predict(x, pred_contrib=True)[0]  # [F + 1], the last is the bias
    order = np.argsort(-np.abs(contrib[:-1]), kind="stable")
    tree = booster.dump_model()["tree_info"][0]["tree_structure"]
    path, leaf = decision_path(tree, row, names)
    return Explanation(raw, 1.0 / (1.0 + math.exp(-raw)), float(contrib[-1]),
                       [(names[i], float(row[i]), float(contrib[i])) for i in order], path, leaf, booster.num_trees())


def decision_path(node: dict, row: np.ndarray, names: list[str]) -> tuple[list[str], float]:
    """Follow one tree (LightGBM's dump_model structure) for `row`; each step in words."""
    steps = []
    while "leaf_value" not in node:
        name, value = names[node["split_feature"]], float(row[node["split_feature"]])
        missing = not np.isfinite(value)
        if node["decision_type"] == "==":  # categorical: the listed categories go left
            categories = [int(c) for c in str(node["threshold"]).split("||")]
            left = node["default_left"] if missing else int(value) in categories
            test = f"{name} is {'missing' if missing else int(value)}: {'one' if left else 'none'} of {categories}"
        else:
            left = node["default_left"] if missing else value <= node["threshold"]
            test = (f"{name} is {'missing' if missing else _number(value)}, "
                    f"{'at most' if left else 'above'} {_number(node['threshold'])}")
        steps.append(f"{test} → {'left' if left else 'right'}")
        node = node["left_child"] if left else node["right_child"]
    return steps, float(node["leaf_value"])


def _number(value: float) -> str:
    return f"{value:.4g}"
