"""`save_model.top_k` of a chain or sweep: the checkpoints of the k runs with the best
validation value of the primary metric are kept; the others' checkpoints are deleted (their
eval.json, metrics, reports and predictions stay, so every summary and comparison still
works). Runs without checkpoints (fitted models) take no place in the ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from recsmith.metrics.direction import lower_is_better

CHECKPOINTS = ("ckpt_best.pt", "ckpt_last.pt")


class SaveModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    top_k: Optional[int] = Field(None, ge=0)  # None: keep every run's checkpoints


def prune_checkpoints(runs: dict[str, tuple[Path, Optional[float]]], primary: str, top_k: Optional[int]) -> list[str]:
    """`runs`: name → (run dir, its validation value of `primary`). Deletes the checkpoints of
    all but the `top_k` best runs that have some (a run without a value ranks last); returns
    the names pruned, best first."""
    if top_k is None:
        return []
    with_checkpoints = [(name, value) for name, (path, value) in runs.items()
                        if any((path / f).is_file() for f in CHECKPOINTS)]
    worst = float("inf") if lower_is_better(primary) else float("-inf")
    ranked = sorted(with_checkpoints, key=lambda item: worst if item[1] is None else item[1],
                    reverse=not lower_is_better(primary))
    pruned = [name for name, _ in ranked[top_k:]]
    for name in pruned:
        for file in CHECKPOINTS:
            (runs[name][0] / file).unlink(missing_ok=True)
    return pruned
