"""Learning-rate schedules: warm-up, cosine / linear decay, and ReduceLROnPlateau's rule,
whose state survives a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from recsmith.config.schema import LRSchedulerConfig
from recsmith.train.schedule import Multiplier, build_schedulers, lr_multiplier, observe_validation


def test_warmup_then_cosine_or_linear_decay_to_the_floor():
    assert [lr_multiplier(s, "linear", 4, 14, 0.1) for s in (0, 3)] == [0.25, 1.0]
    assert lr_multiplier(9, "linear", 4, 14, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(14, "linear", 4, 14, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(9, "cosine", 4, 14, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(100, "constant", 4, 14, 0.0) == lr_multiplier(100, "plateau", 4, 14, 0.0) == 1.0


class _Optimizers:
    def __init__(self):
        self.optimizers = {"dense": torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)}


def test_plateau_cuts_the_rate_after_patience_evaluations_without_gain_and_keeps_it_in_checkpoints():
    cfg = LRSchedulerConfig(type="plateau", total_steps=100, plateau_factor=0.5, plateau_patience=2, min_lr_ratio=0.2)
    optim = _Optimizers()
    schedulers = build_schedulers(optim, cfg)
    lr = lambda: optim.optimizers["dense"].param_groups[0]["lr"]  # noqa: E731
    for improved in (True, False, False):  # two evaluations without gain: halve
        observe_validation(schedulers, improved)
    schedulers["dense"].step()
    assert lr() == 0.5
    for improved in (False, True, False, False, False, False):  # a gain resets the count; then two more cuts
        observe_validation(schedulers, improved)
    schedulers["dense"].step()
    assert lr() == pytest.approx(0.2)  # 0.125 is below the floor min_lr_ratio
    state = schedulers["dense"].state_dict()
    restored = build_schedulers(_Optimizers(), cfg)["dense"]
    restored.load_state_dict(state)
    assert restored.lr_lambdas[0].factor == pytest.approx(0.2)


def test_other_schedules_ignore_validation_results():
    multiplier = Multiplier(LRSchedulerConfig(type="cosine", total_steps=10))
    for _ in range(5):
        multiplier.observe(False)
    assert multiplier.factor == 1.0
