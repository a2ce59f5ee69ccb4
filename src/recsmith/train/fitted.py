"""Sequential-family models fitted without the Trainer: most-popular, LightGBM on the
explicit features, and the DIN + LightGBM hybrid. They write the same run dir (config,
eval.json, predictions) and are evaluated by the same code as the neural models."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from recsmith.atomic import write_text_atomic
from recsmith.data.sequence_dataset import SequenceDataset
from recsmith.errors import ConfigError
from recsmith.metrics.ranking import CTR_STYLE
from recsmith.models.gbdt.features import LGB_CATEGORICAL, DINFeatures, FeatureMatrix
from recsmith.run_dir import RunDir
from recsmith.train.evaluate_sequential import EvalSplit, candidate_matrix, evaluate_sequential
from recsmith.train.sequential import keep_candidate_scores, protocol_label
from recsmith.train.sequential_data import EventHistories

log = logging.getLogger("recsmith.train")
BOOSTER_FILE = "model.lgb.txt"


def pairs(events: np.ndarray, candidates: np.ndarray | None, num_items: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Flattened (event, item) pairs and the [N, C] shape; None = every item 1..I."""
    candidates = candidate_matrix(len(events), candidates, num_items)
    return np.repeat(events, candidates.shape[1]), candidates.ravel(), candidates.shape


class PopularityScorer:
    """Most-popular: an item's interactions (any user) before the target's timestamp."""

    objective, has_loss = "softmax", False  # a count, neither a probability nor a logit

    def __init__(self, dataset: SequenceDataset):
        self.builder, self.num_items = dataset.feature_builder(), dataset.log.num_items

    def score(self, events: np.ndarray, candidates: np.ndarray | None) -> torch.Tensor:
        ev, items, shape = pairs(events, candidates, self.num_items)
        return torch.from_numpy(self.builder.item_popularity(items, self.builder.log.ts[ev]).reshape(shape))


class BoosterScorer:
    """A LightGBM booster's raw score (log-odds) of each pair's feature row."""

    objective, has_loss = "bce", True

    def __init__(self, booster, matrix: FeatureMatrix, num_items: int, chunk_rows: int = 400_000):
        self.booster, self.matrix, self.num_items, self.chunk_rows = booster, matrix, num_items, chunk_rows

    def score(self, events: np.ndarray, candidates: np.ndarray | None) -> torch.Tensor:
        ev, items, shape = pairs(events, candidates, self.num_items)
        out = np.empty(len(ev), np.float64)
        for s in range(0, len(ev), self.chunk_rows):
            out[s:s + self.chunk_rows] = self.booster.predict(self.matrix(ev[s:s + self.chunk_rows], items[s:s + self.chunk_rows]),
                                                              raw_score=True)
        return torch.from_numpy(out.reshape(shape))


def load_din(run_dir: str | Path, dataset: SequenceDataset):
    """A trained DIN run's best model, checked to be trained on `dataset`."""
    from recsmith.data.sources import resolve_dataset

    model, max_length, din_cfg = load_din_run(run_dir, dataset.log.num_items)
    if Path(resolve_dataset(din_cfg.data)).resolve() != dataset.directory.resolve():
        raise ConfigError(f"model.sequential.hybrid_din_run: {run_dir} was trained on another dataset")
    return model, max_length


def load_din_run(run_dir: str | Path, num_items: int):
    """(model in eval mode, its history length, its config) of a trained DIN run."""
    from recsmith.config.loader import load_experiment

    run = RunDir(run_dir)
    if not run.config.is_file() or not run.ckpt_best.is_file():
        raise ConfigError(f"model.sequential.hybrid_din_run: no trained run at {run_dir} (config.yaml, ckpt_best.pt)")
    din_cfg = load_experiment(run.config)
    if din_cfg.model.family != "sequential" or din_cfg.model.sequential.architecture != "din":
        raise ConfigError(f"model.sequential.hybrid_din_run: {run_dir} is not a DIN run")
    return load_sequential_model(run, din_cfg, num_items), din_cfg.model.sequential.max_length, din_cfg


def load_sequential_model(run: RunDir, cfg, num_items: int):
    """A trained neural sequence run's best checkpoint, in eval mode."""
    from recsmith.models.next_item import build_sequential_model
    from recsmith.train.checkpoint import load_checkpoint

    model = build_sequential_model(num_items, cfg)
    model.load_state_dict(load_checkpoint(run.ckpt_best)["model"])
    return model.eval()


def feature_matrix(cfg, dataset: SequenceDataset, run: RunDir) -> FeatureMatrix:
    """Explicit features, plus the DIN columns for the hybrid. A relative hybrid_din_run is
    a sibling of `run`'s dir (in a chain: another experiment of the same chain)."""
    din = None
    if cfg.model.sequential.architecture == "hybrid":
        model, max_length = load_din(run.path.resolve().parent / cfg.model.sequential.hybrid_din_run, dataset)
        din = DINFeatures(model, EventHistories(dataset.log, np.arange(len(dataset.log)), max_length))
    return FeatureMatrix(dataset.feature_builder(), din)


def fit_booster(cfg, dataset: SequenceDataset, matrix: FeatureMatrix, run: RunDir):
    import lightgbm as lgb

    p = cfg.model.sequential.lightgbm
    data = {}
    for split in ("train", "valid"):
        rows = dataset.candidates(split, ["event", "item_id", "like"])
        data[split] = lgb.Dataset(matrix(rows["event"], rows["item_id"]), rows["like"], feature_name=matrix.names,
                                  categorical_feature=list(LGB_CATEGORICAL), free_raw_data=False)
    params = {"objective": "binary", "metric": "auc", "num_leaves": p.num_leaves, "learning_rate": p.learning_rate,
              "min_data_in_leaf": p.min_data_in_leaf, "feature_fraction": p.feature_fraction,
              "seed": cfg.runtime.seed, "deterministic": True, "verbose": -1,
              "num_threads": cfg.runtime.num_threads or torch.get_num_threads()}
    booster = lgb.train(params, data["train"], p.num_boost_round, valid_sets=[data["valid"]], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(p.early_stopping_rounds, verbose=False)])
    write_text_atomic(run.path / BOOSTER_FILE, booster.model_to_string())
    return booster


def fit_run(cfg, run: RunDir, dataset_dir: Path) -> dict:
    """Fit (or count) the model, evaluate valid and test like the neural models do."""
    dataset = SequenceDataset.load(dataset_dir)
    seq = cfg.model.sequential
    importance, parameters, best = {}, 0, 0
    if seq.architecture == "most_popular":
        scorer = PopularityScorer(dataset)
    else:
        matrix = feature_matrix(cfg, dataset, run)
        booster = fit_booster(cfg, dataset, matrix, run)
        scorer = BoosterScorer(booster, matrix, dataset.log.num_items)
        gains = booster.feature_importance("gain")
        importance = {n: round(float(g), 3) for n, g in sorted(zip(matrix.names, gains), key=lambda x: -x[1])}
        parameters, best = booster.num_trees() * (2 * seq.lightgbm.num_leaves - 1), booster.best_iteration
        log.info("LightGBM: %d trees (best iteration %d), top gain: %s", booster.num_trees(), best,
                 ", ".join(list(importance)[:5]))
    metrics = {}
    for split in ("valid", "test"):
        data = EvalSplit.build(dataset, split, cfg.topk.sampled_negatives, cfg.data.seed)
        top_k = split == "test" or cfg.runtime.best_selection.primary_key not in CTR_STYLE  # as in training
        keep = (functools.partial(keep_candidate_scores, run, scorer.objective, data, dataset_dir)
                if split == "test" else None)
        metrics[split] = evaluate_sequential(scorer, data, cfg.topk, with_topk=top_k, keep_scores=keep)
        metrics[split]["auc_primary"] = metrics[split][cfg.runtime.best_selection.primary_key]
    test_rows = len(data.events)
    return {"best_step": best, "valid": metrics["valid"], "test": metrics["test"], "test_rows": test_rows,
            "parameters": parameters, "protocol": protocol_label(cfg), "feature_importance_gain": importance}


def explain_prediction(run_dir: str | Path, user, item, split: str = "test"):
    """Explain a LightGBM / hybrid run's score of raw `item` for raw `user` at the time of the
    user's `split` target (their last interaction for test). Returns (Explanation, context)."""
    import lightgbm as lgb

    from recsmith.config.loader import load_experiment
    from recsmith.data.sequences import SPLIT_CODES
    from recsmith.data.sources import resolve_dataset
    from recsmith.errors import DataError
    from recsmith.models.gbdt.explain import explain_row

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DataError(f"not a run directory (no config.yaml): {run_dir}")
    cfg = load_experiment(run.config)
    if cfg.model.family != "sequential" or cfg.model.sequential.architecture not in ("lightgbm", "hybrid"):
        raise ConfigError(f"{run_dir}: explain needs a lightgbm or hybrid run")
    if not (run.path / BOOSTER_FILE).is_file():
        raise DataError(f"{run_dir}: no {BOOSTER_FILE}: the run has not finished")
    dataset = SequenceDataset.load(resolve_dataset(cfg.data))
    ids = dataset.raw_ids()
    codes = {name: {str(v): i for i, v in enumerate(values) if v is not None} for name, values in ids.items()}
    if str(user) not in codes["user_id"]:
        raise DataError(f"--user: user {user} is not in the dataset")
    if str(item) not in codes["item_id"]:
        raise DataError(f"--item: item {item} is not in the dataset")
    u, i = codes["user_id"][str(user)], codes["item_id"][str(item)]
    log = dataset.log
    events = np.flatnonzero((log.user == u) & (log.split == SPLIT_CODES[split]))
    event = events[-1]
    matrix = feature_matrix(cfg, dataset, run)
    booster = lgb.Booster(model_file=str(run.path / BOOSTER_FILE))
    row = matrix(np.array([event]), np.array([i]))[0]
    context = {"user": user, "item": item, "split": split, "time": int(log.ts[event]),
               "history_length": int(log.visible_count(np.array([event]))[0]),
               "true_item": ids["item_id"][int(log.item[event])], "architecture": cfg.model.sequential.architecture}
    return explain_row(booster, row, matrix.names), context
