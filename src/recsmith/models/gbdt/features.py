"""The feature matrix LightGBM reads: the explicit features of (event, item) pairs, plus,
for the hybrid, a trained DIN's 64-d interest vector and its score for the pair."""

from __future__ import annotations

import numpy as np
import torch

from recsmith.data.seq_features import CATEGORICAL, IDS, NUMERIC, FeatureBuilder

EXPLICIT = tuple(n for n in CATEGORICAL if n not in IDS) + NUMERIC
LGB_CATEGORICAL = tuple(n for n in CATEGORICAL if n not in IDS)


class DINFeatures:
    """A trained DIN's interest vector and score for (event, item) pairs."""

    def __init__(self, model, history, batch_rows: int = 16384):
        self.model, self.history, self.batch_rows = model.eval(), history, batch_rows
        self.names = [f"din_interest_{i}" for i in range(model.net.interest_projection.out_features)] + ["din_score"]

    @torch.no_grad()
    def __call__(self, events: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, cand = self.history.rows(events), torch.from_numpy(np.array(items, np.int64))  # a copy: writable
        parts = []
        for s in range(0, len(rows), self.batch_rows):
            r, c = rows[s:s + self.batch_rows], cand[s:s + self.batch_rows]
            h, a = self.history.items[r], self.history.ages[r]
            interest = self.model.net.interest(h, a, c)
            parts.append(torch.cat([interest, self.model.net.score(interest, c).unsqueeze(-1)], 1).numpy())
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, len(self.names)), np.float32)


class FeatureMatrix:
    """Pairs → the [N, F] float32 matrix (categorical codes as floats) and its column names."""

    def __init__(self, builder: FeatureBuilder, din: DINFeatures | None = None):
        self.builder, self.din = builder, din
        self.names = list(EXPLICIT) + (din.names if din else [])

    def __call__(self, events: np.ndarray, items: np.ndarray) -> np.ndarray:
        return assemble(self.builder.features(events, items), self.din(events, items) if self.din else None)


def assemble(features: dict[str, np.ndarray], din: np.ndarray | None = None) -> np.ndarray:
    """The [N, F] matrix of explicit features (FeatureBuilder.features), then the DIN columns."""
    matrix = np.stack([features[n].astype(np.float32) for n in EXPLICIT], axis=1)
    return np.concatenate([matrix, din], axis=1) if din is not None else matrix
