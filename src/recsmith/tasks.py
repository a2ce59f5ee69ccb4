"""Tasks: which label a head predicts and where that label is observed. A dataset's
schema lists its tasks; the funnel datasets share the two below."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the head's name, e.g. "ctr"
    label: str  # label column in the dataset
    observed_when: str | None = None  # label column that must be 1 for this label to exist

    def to_json(self) -> dict:
        return asdict(self)


FUNNEL_TASKS = (
    TaskSpec("ctr", label="click"),
    TaskSpec("cvr", label="conversion", observed_when="click"),  # post-click
)


def esmm_pair(tasks: Mapping[str, TaskSpec]) -> tuple[TaskSpec, TaskSpec] | None:
    """(ctr, cvr) when the tasks form a click → conversion funnel that ESMM can chain."""
    ctr, cvr = tasks.get("ctr"), tasks.get("cvr")
    if ctr is None or cvr is None or cvr.observed_when != ctr.label:
        return None
    return ctr, cvr
