"""A model bundle: everything needed to score raw rows with a trained model, in one
self-contained directory that outlives its run dir and its dataset cache.

    bundle.json     what it is: source run, config hash, tasks, metrics, features, training data
    config.yaml     the run's resolved config
    model.pt        {"model": state dict of the best checkpoint, "step": ...}
    schema.json     the dataset schema (fields, vocabulary sizes, tasks)
    features.json   the feature definitions     } the one transformation code path
    vocab.json      the fitted encoders         } shared with training (FeaturePipeline)
    eval.json       the run's evaluation report

(the dataset files are the family's `serving_files`: a text classifier's is schema.json only)
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import yaml

from recsmith.atomic import save_torch_atomic, write_json_atomic
from recsmith.config.loader import load_experiment
from recsmith.data.schema import SCHEMA_FILE, DatasetSchema
from recsmith.errors import DataError
from recsmith.experiments.tracker import config_hash
from recsmith.features.pipeline import FEATURES_FILE
from recsmith.plugins import DEFAULT_FAMILY, family, family_of
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.precision import SCORING

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.pt"
# what a dataset's schema records about the rows a model learned from: how they were split,
# how many were read and rejected, which data it extended, a synthetic funnel's knobs and seed
TRAINING_DATA_META = ("split", "rows_read", "rows_rejected", "extends_vocab_of", "knobs", "seed")


def run_dataset_dir(run: RunDir) -> Path:
    """The prepared dataset a finished run trained on (recorded in its eval.json)."""
    report = run.read_json(run.eval)
    if not report:
        raise DataError(f"{run.path}: not a finished run (no readable eval.json)")
    dataset = Path(report.get("dataset", ""))
    if not (dataset / SCHEMA_FILE).is_file():
        raise DataError(f"{run.path}: its dataset {dataset} is gone; prepare it again (recsmith data prepare "
                        f"{run.config}) before bundling")
    return dataset


def check_bundlable(run: RunDir) -> tuple[dict, dict, Path]:
    """(config, eval report, dataset dir) of a run that can be bundled, or a DataError."""
    if not run.config.is_file():
        raise DataError(f"not a run directory (no config.yaml): {run.path}")
    config = yaml.safe_load(run.config.read_text())
    owner = family(config.get("model", {}).get("family", DEFAULT_FAMILY))
    if not owner.servable:
        raise DataError(f"{run.path}: model family '{owner.name}' cannot be bundled for serving")
    if owner.fitted(load_experiment(run.config)):
        raise DataError(f"{run.path}: a fitted {owner.name} model (no checkpoint) is not served; serve a trained run")
    if not run.ckpt_best.is_file():
        raise DataError(f"{run.path}: no ckpt_best.pt (the run has not finished a validation)")
    dataset = run_dataset_dir(run)
    for name in owner.serving_files:
        if not (dataset / name).is_file():
            raise DataError(f"{dataset}: no {name}, so raw rows cannot be encoded for serving; prepare "
                            "the dataset again with this version of recsmith")
    return config, run.read_json(run.eval) or {}, dataset


def served_precision(report: dict) -> dict:
    """Which precision trained the model (its eval.json) and which one scores it (always SCORING)."""
    trained = report.get("precision", {}).get("train", "not recorded (a run from before recsmith recorded it)")
    return {"train": trained, "score": SCORING}


def write_bundle(run_dir: str | Path, dest: str | Path) -> dict:
    """Copy a finished run of a servable family into the bundle directory `dest` (created; must not exist
    or be empty). Returns bundle.json's content."""
    run, dest = RunDir(run_dir), Path(dest)
    config, report, dataset = check_bundlable(run)
    cfg = load_experiment(run.config)
    schema = DatasetSchema.load(dataset)
    best = load_checkpoint(run.ckpt_best)
    dest.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(dest / MODEL_FILE, {"model": best["model"], "step": best["step"]})
    shutil.copyfile(run.config, dest / "config.yaml")
    files = family_of(cfg).serving_files
    for name in files:
        shutil.copyfile(dataset / name, dest / name)
    shutil.copyfile(run.eval, dest / "eval.json")
    meta = {
        "run_dir": str(run.path.resolve()),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "config_hash": config_hash(config),
        "family": cfg.model.family,
        "name": config.get("name"),
        "tasks": family_of(cfg).heads(cfg),
        "primary_key": report.get("primary_key"),
        "best_step": best["step"],
        "precision": served_precision(report),
        "metrics": {"valid": report.get("valid", {}), "test": report.get("test", {})},
        "features": ([f["name"] for f in json.loads((dataset / FEATURES_FILE).read_text())["features"]]
                     if FEATURES_FILE in files else []),
        "training_data": {"dataset": str(dataset), "source": schema.source, "split_rows": schema.split_rows,
                          **{key: schema.meta[key] for key in TRAINING_DATA_META if key in schema.meta}},
    }
    write_json_atomic(dest / BUNDLE_FILE, meta)
    return meta
