"""Batch inference for a sequence run (`recsmith predict RUN --store URI`): each input row is
a request answered from the online store exactly as the service answers it.

Rankers (DIN, LightGBM, the hybrid) read rows of `user`, `item` and optionally `at` (the
request time in seconds; default: now) and write `score` (the model's raw score: a logit, or
LightGBM's log-odds); rows of one user at one time are scored in one call, as one request's
candidates. Recommenders (SASRec, GRU4Rec, NARM, AvgPool, most-popular) read `user` and
optionally `at`, and write the top `k` `items` and their `scores`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsmith.errors import DataError
from recsmith.online.features import request_time_now
from recsmith.online.scoring import SequenceService


class StoreScorer:
    """A SequenceService behind `recsmith.serve.batch.predict_file`'s scorer interface."""

    output_prefix = ""  # the columns are named as they are ('score'; 'items', 'scores')

    def __init__(self, service: SequenceService, k: int = 10, exclude_seen: bool = False):
        self.service, self.k, self.exclude_seen = service, k, exclude_seen
        self.input_columns = ["user", "item"] if service.mode == "predict" else ["user"]
        self.now = request_time_now()

    def predict_table(self, table: pa.Table) -> dict:
        users = [str(u) for u in table["user"].to_pylist()]
        at = table["at"].to_pylist() if "at" in table.column_names else [self.now] * table.num_rows
        if any(t is None for t in at):
            raise DataError(f"row {at.index(None)}: 'at' is empty (give the request time in seconds, or leave the "
                            "column out for now)")
        if self.service.mode == "recommend":
            answers = [self.service.recommend(u, int(t), self.k, self.exclude_seen) for u, t in zip(users, at)]
            return {"items": pa.array([[str(i) for i in a.items] for a in answers], pa.list_(pa.string())),
                    "scores": pa.array([a.scores.tolist() for a in answers], pa.list_(pa.float64()))}
        items = table["item"].to_pylist()
        requests: dict[tuple, list[int]] = {}
        for row, key in enumerate(zip(users, at)):
            requests.setdefault(key, []).append(row)
        scores = np.empty(table.num_rows)
        for (user, t), rows in requests.items():
            scores[rows] = self.service.predict(user, int(t), [items[r] for r in rows]).scores
        return {"score": scores}
