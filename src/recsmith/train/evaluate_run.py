"""Evaluate a finished (or partial) run's checkpoint on any split."""

from __future__ import annotations

from pathlib import Path

from recsmith.config.loader import load_experiment
from recsmith.data.batches import load_split
from recsmith.data.compatibility import check_experiment_fits
from recsmith.data.schema import SPLITS, DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ConfigError, DataError
from recsmith.models.ranking import build_model
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.evaluate import evaluate
from recsmith.train.losses import build_loss
from recsmith.train.run import resolve_device


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best") -> dict:
    """Metrics of `ckpt_{which}.pt` of a run on `split`, with the run's own config."""
    if split not in SPLITS:
        raise ConfigError(f"--split: unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if which not in ("best", "last"):
        raise ConfigError(f"--checkpoint: '{which}' is not best or last")
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DataError(f"not a run directory (no config.yaml): {run_dir}")
    cfg = load_experiment(run.config)
    if cfg.model.family == "sequential":
        raise ConfigError(f"{run_dir}: recsmith evaluate covers ranking runs; a sequential run's valid and test "
                          "metrics (both protocols) are in its eval.json")
    state = load_checkpoint(run.ckpt_best if which == "best" else run.ckpt_last)
    dataset_dir = resolve_dataset(cfg.data)
    schema = DatasetSchema.load(dataset_dir)
    check_experiment_fits(cfg, schema)
    model = build_model(schema, cfg)
    model.load_state_dict(state["model"])
    device = resolve_device(cfg.runtime.device)
    data = load_split(dataset_dir, schema, split)
    metrics, _ = evaluate(model.to(device), build_loss(cfg, schema.task_specs), data, cfg.data.eval_batch_size, device,
                          cfg.runtime.best_selection.primary_key)
    return {"step": state["step"], **metrics}
