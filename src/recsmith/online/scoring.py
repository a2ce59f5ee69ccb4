"""A sequence run answering requests from the online store: top-K recommendations from a
next-item model (SASRec, GRU4Rec, NARM, AvgPool) or most-popular, candidate scores from DIN,
LightGBM or the DIN + LightGBM hybrid. Each request is a RequestView (recsmith.online.features) and is
scored by the classes that evaluated the run: TorchScorer on the view's one-user log, and
LightGBM on the matrix `FeatureMatrix` assembles (explicit features, then DIN's columns),
most-popular by the popularity count the offline scorer uses (`seq_features.popularity`) on
the store's popularity keys. Most-popular needs no history, so it also answers users the
store does not know (the cold-start fallback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recsmith.config.loader import load_experiment
from recsmith.errors import ConfigError, DataError
from recsmith.models.gbdt.features import DINFeatures, assemble
from recsmith.data.seq_features import popularity
from recsmith.online.codec import unpack
from recsmith.online.features import OnlineFeatures, RequestView, UserRecord
from recsmith.online.materialize import POPULARITY
from recsmith.online.store import OnlineStore
from recsmith.run_dir import RunDir
from recsmith.train.evaluate_sequential import TorchScorer
from recsmith.train.fitted import BOOSTER_FILE, load_din_run, load_sequential_model
from recsmith.train.sequential_data import EventHistories

MOST_POPULAR = "most_popular"
RECOMMENDERS = ("sasrec", "gru4rec", "narm", "avgpool", MOST_POPULAR)  # score every item: POST /recommend
RANKERS = ("din", "lightgbm", "hybrid")  # score given candidates: POST /predict


@dataclass
class Answer:
    """A request's answer and what the model read to give it (the request log's features)."""

    items: list  # raw ids, in answer order
    scores: np.ndarray
    history: np.ndarray  # the item codes of the user's history the model read (empty: none)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # per item, by feature: LightGBM's matrix


class SequenceService:
    def __init__(self, run_dir: str | Path, store: OnlineStore):
        run = RunDir(run_dir)
        if not run.config.is_file():
            raise ConfigError(f"{run_dir}: not a run dir (no config.yaml)")
        cfg = load_experiment(run.config)
        self.run_dir = str(run_dir)
        if cfg.model.family != "sequential":
            raise ConfigError(f"{run_dir}: a '{cfg.model.family}' run; the online store serves sequence runs")
        manifest = store.manifest()
        if manifest is None:
            raise DataError(f"online store {store.uri} is empty: run `recsmith features materialize {run_dir} "
                            f"--store {store.uri}` first")
        catalog = store.get_many(["catalog"])[0]
        self.items_raw = unpack(catalog)[1]["items"]  # raw id by code (code 0: none)
        self.codes = {str(raw): code for code, raw in enumerate(self.items_raw) if raw is not None}
        self.num_items, self.store, self.features = manifest["items"], store, OnlineFeatures(store)
        seq = cfg.model.sequential
        self.architecture, self.max_length, self.objective = seq.architecture, seq.max_length, seq.objective
        self.model = self.booster = self.din = None
        if seq.architecture == MOST_POPULAR:
            pass  # counts, read from the store per request
        elif seq.architecture in RECOMMENDERS + ("din",):
            self.model = load_sequential_model(run, cfg, self.num_items)
        elif seq.architecture in ("lightgbm", "hybrid"):
            import lightgbm as lgb

            if not (run.path / BOOSTER_FILE).is_file():
                raise DataError(f"{run_dir}: no {BOOSTER_FILE}: the run has not finished")
            self.booster = lgb.Booster(model_file=str(run.path / BOOSTER_FILE))
            if seq.architecture == "hybrid":
                self.din, self.din_length, _ = load_din_run(run.path.resolve().parent / seq.hybrid_din_run,
                                                            self.num_items)
        else:
            raise ConfigError(f"{run_dir}: '{seq.architecture}' is not served online yet "
                              f"(served: {', '.join(RECOMMENDERS + RANKERS)})")
        self.mode = "recommend" if seq.architecture in RECOMMENDERS else "predict"
        self.input_names = self.booster.feature_name() if self.booster is not None else []  # logged per item

    def item_codes(self, items: list) -> np.ndarray:
        unknown = [i for i in items if str(i) not in self.codes]
        if unknown:
            raise DataError(f"item(s) {unknown[:5]} are not in the catalogue")
        return np.array([self.codes[str(i)] for i in items], np.int64)

    @torch.no_grad()
    def recommend(self, user, at: int, k: int, exclude_seen: bool = False) -> Answer:
        """The top `k` items (raw ids) and their scores for `user` at time `at`."""
        if self.mode != "recommend":
            raise ConfigError(f"a '{self.architecture}' model scores given candidates (POST /predict), "
                              "it does not rank the catalogue")
        history = np.zeros(0, np.int64)
        if self.architecture == MOST_POPULAR:
            keys = unpack(self.store.get_many([POPULARITY])[0])[0]["keys"]
            scores = torch.from_numpy(popularity(keys, np.arange(1, self.num_items + 1), at))
            seen = self._seen(user, at) if exclude_seen else history
        else:
            view = self.features.request(user, at, num_items=self.num_items)
            scores = self._torch(view).score(np.array([view.visible]), None)[0].double()
            seen = view.log.item[:view.visible]
            history = seen[-self.max_length:]
        if exclude_seen and len(seen):
            scores[torch.from_numpy(seen - 1)] = -torch.inf
        top = torch.topk(scores, min(k, self.num_items))
        return Answer([self.items_raw[c] for c in (top.indices + 1).tolist()], top.values.numpy(), history)

    @torch.no_grad()
    def predict(self, user, at: int, items: list) -> Answer:
        """Scores (logits; LightGBM's raw score) of the candidate items (raw ids)."""
        codes, view = self._view(user, at, items)
        if self.booster is None:
            scores = self._torch(view).score(np.array([view.visible]), codes[None, :])[0].double().numpy()
            return Answer(list(items), scores, view.log.item[:view.visible][-self.max_length:])
        matrix = self._matrix(view, codes)
        return self._booster_answer(items, self.booster.predict(matrix, raw_score=True), view, matrix)

    @torch.no_grad()
    def explain(self, user, at: int, items: list, top: int) -> tuple[Answer, float, list[list[dict]]]:
        """LightGBM's SHAP values (pred_contrib) of each candidate: (the answer, the bias, per
        candidate its `top` features by |contribution| with their values). The contributions
        and the bias add up to the score."""
        if self.booster is None:
            raise ConfigError(f"reasons come from LightGBM's SHAP values (lightgbm and hybrid runs); this is a "
                              f"'{self.architecture}' run")
        codes, view = self._view(user, at, items)
        matrix = self._matrix(view, codes)
        contrib = self.booster.predict(matrix, pred_contrib=True)  # [N, F + 1], the last column is the bias
        names = self.input_names
        reasons = []
        for row, values in zip(contrib, matrix):
            order = np.argsort(-np.abs(row[:-1]), kind="stable")[:top]
            reasons.append([{"feature": names[i], "value": float(values[i]), "contribution": float(row[i])}
                            for i in order])
        return self._booster_answer(items, contrib.sum(axis=1), view, matrix), float(contrib[0, -1]), reasons

    def _booster_answer(self, items: list, scores: np.ndarray, view: RequestView, matrix: np.ndarray) -> Answer:
        """A LightGBM or hybrid answer with what it read: the matrix's columns, and the history
        a hybrid's DIN read (none for LightGBM alone: it reads the sums)."""
        history = view.log.item[:view.visible][-self.din_length:] if self.din is not None else np.zeros(0, np.int64)
        return Answer(list(items), scores, history, dict(zip(self.input_names, matrix.T)))

    def _seen(self, user, at: int) -> np.ndarray:
        """The item codes `user` interacted with before `at` (none for a user the store does not know)."""
        value = self.store.get_many([f"user:{user}"])[0]
        if value is None:
            return np.zeros(0, np.int64)
        record = UserRecord(*unpack(value))  # a corrupt record still fails loudly
        return record.arrays["item"][:record.visible(at)]

    def _view(self, user, at: int, items: list) -> tuple[np.ndarray, RequestView]:
        codes = self.item_codes(items)
        return codes, self.features.request(user, at, codes, num_items=self.num_items)

    def _matrix(self, view: RequestView, codes: np.ndarray) -> np.ndarray:
        """The booster's input: explicit features, then (the hybrid) DIN's columns."""
        events = np.full(len(codes), view.visible)
        din = None
        if self.din is not None:
            din = DINFeatures(self.din, EventHistories(view.log, events[:1], self.din_length))(events, codes)
        return assemble(view.features(), din)

    def _torch(self, view: RequestView) -> TorchScorer:
        return TorchScorer(self.model, view.log, np.array([view.visible]), self.max_length, self.objective,
                           torch.device("cpu"))
