"""The trainer in-process: NaN detection and best selection."""

import math

import pytest
import torch

from recsmith.config.loader import validate_experiment
from recsmith.errors import TrainingError
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.families.ranking.setup import load_training_data
from recsmith.train.run import train_run
from recsmith.train.trainer import BestTracker

from conftest import tiny_experiment


def test_best_tracker_records_every_decision():
    tracker = BestTracker("auc_ctr", "max")
    decisions = [tracker.decide(s, v) for s, v in ((10, 0.6), (20, math.nan), (30, 0.7), (40, 0.65))]
    assert [d["improved"] for d in decisions] == [True, False, True, False]
    assert decisions[-1]["best_step"] == 30 and decisions[-1]["best_value_before"] == 0.7
    low = BestTracker("loss", "min")
    assert low.decide(1, 0.5)["improved"] and low.decide(2, 0.4)["improved"] and not low.decide(3, 0.45)["improved"]


def test_a_nan_loss_stops_training_with_a_clear_error(tmp_path, monkeypatch):
    cfg = validate_experiment(tiny_experiment())
    from recsmith.train import losses

    original = losses.MultiTaskLoss.__call__

    def poisoned(self, logits, labels):
        total, terms = original(self, logits, labels)
        return total * torch.tensor(float("nan")), terms

    monkeypatch.setattr(losses.MultiTaskLoss, "__call__", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at step 10"):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "ckpt_last.pt").exists()


def test_clicked_subset_trains_on_clicks_only():
    cfg = validate_experiment(tiny_experiment(**{
        "data.train_subset": "clicked", "model.mtl": "single", "model.enabled_heads": ["cvr"],
        "runtime.best_selection.primary_key": "auc_cvr"}))
    dataset_dir = resolve_dataset(cfg.data)
    train, valid = load_training_data(cfg, dataset_dir, DatasetSchema.load(dataset_dir))
    assert bool((train.labels["click"] == 1).all())
    assert float(valid.labels["click"].mean()) < 0.5  # evaluation keeps every impression


def test_bf16_autocast_on_cpu_trains_to_finite_metrics(tmp_path):
    cfg = validate_experiment(tiny_experiment(**{"runtime.amp": True, "runtime.max_train_steps": 10,
                                                 "lr_scheduler.total_steps": 10, "runtime.eval_every_steps": 10,
                                                 "model.mtl": "mmoe", "model.esmm.enabled": True}))
    result = train_run(cfg, tmp_path / "run")
    assert all(math.isfinite(result["test"][k]) for k in ("auc_ctr", "auc_cvr", "auc_ctcvr", "loss"))
    env = (tmp_path / "run" / "env.json").read_text()
    assert "bf16 autocast (runtime.amp is true); scored in fp32" in env
    assert result["precision"] == {"train": "bf16", "score": "fp32", "device": "cpu", "reason": "runtime.amp is true"}
