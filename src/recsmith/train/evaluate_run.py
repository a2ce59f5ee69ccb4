"""Evaluate a finished (or partial) run's checkpoint on any split, through its family."""

from __future__ import annotations

from pathlib import Path

from recsmith.config.loader import load_experiment
from recsmith.data.compatibility import check_experiment_fits
from recsmith.data.schema import SPLITS, DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ConfigError, DataError
from recsmith.plugins import family_of
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import load_checkpoint


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
    owner = family_of(cfg)
    if owner.fitted(cfg):
        raise ConfigError(f"{run_dir}: a fitted model has no checkpoint to evaluate; its valid and test metrics "
                          "are in its eval.json")
    state = load_checkpoint(run.ckpt_best if which == "best" else run.ckpt_last)
    dataset_dir = resolve_dataset(cfg.data)
    check_experiment_fits(cfg, DatasetSchema.load(dataset_dir))
    return {"step": state["step"], **owner.evaluate_checkpoint(cfg, state, dataset_dir, split)}
