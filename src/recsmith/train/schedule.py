"""Learning-rate schedules as multipliers of the base rate, applied to both optimizers."""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, kind: str, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier for the update after `step` finished updates (step 0 is the first update).

    Linear warmup to 1 over `warmup_steps`, then `constant` or a cosine decay that reaches
    `min_ratio` at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedulers(optimizer, sched_cfg) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    def multiplier(step: int) -> float:
        return lr_multiplier(step, sched_cfg.type, sched_cfg.warmup_steps,
                             sched_cfg.total_steps, sched_cfg.min_lr_ratio)

    return {name: torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
            for name, opt in optimizer.optimizers.items()}
