"""Learning-rate schedules as multipliers of the base rate, applied to both optimizers
(recsmith.config.schema.LRSchedulerConfig)."""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, kind: str, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier for the update after `step` finished updates (step 0 is the first update).

    Linear warmup to 1 over `warmup_steps`, then `constant` (and `plateau`, whose reductions
    Multiplier applies), or a `cosine` / `linear` decay that reaches `min_ratio` at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind in ("constant", "plateau"):
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Multiplier:
    """The schedule's multiplier as a callable object, so that LambdaLR's state_dict keeps its
    plateau state (`factor`, `bad_evaluations`) in checkpoints."""

    def __init__(self, cfg):
        self.kind, self.warmup, self.total = cfg.type, cfg.warmup_steps, cfg.total_steps
        self.min_ratio, self.plateau_factor, self.patience = cfg.min_lr_ratio, cfg.plateau_factor, cfg.plateau_patience
        self.factor, self.bad_evaluations = 1.0, 0

    def __call__(self, step: int) -> float:
        return self.factor * lr_multiplier(step, self.kind, self.warmup, self.total, self.min_ratio)

    def observe(self, improved: bool) -> None:
        """A validation result: `plateau` cuts the rate after `patience` evaluations without gain."""
        if self.kind != "plateau":
            return
        self.bad_evaluations = 0 if improved else self.bad_evaluations + 1
        if self.bad_evaluations >= self.patience:
            self.factor, self.bad_evaluations = max(self.min_ratio, self.factor * self.plateau_factor), 0


def build_schedulers(optimizer, sched_cfg) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, Multiplier(sched_cfg))
            for name, opt in optimizer.optimizers.items()}


def observe_validation(schedulers: dict, improved: bool) -> None:
    """Tell every schedule whether the validation metric improved (`plateau` acts on it; the
    new rate applies from the next update)."""
    for scheduler in schedulers.values():
        for multiplier in scheduler.lr_lambdas:
            multiplier.observe(improved)
