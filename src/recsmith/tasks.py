"""The funnel's tasks: which label each head predicts and where that label is observed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str  # label column in the dataset
    observed_when: str | None = None  # label column that must be 1 for this label to exist


TASKS: dict[str, TaskSpec] = {
    "ctr": TaskSpec("ctr", label="click"),
    "cvr": TaskSpec("cvr", label="conversion", observed_when="click"),  # post-click
}
