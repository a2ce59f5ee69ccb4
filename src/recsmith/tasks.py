"""Tasks: which label a head predicts and where that label is observed. A dataset's
schema lists its tasks; the funnel datasets share the two below.

A **funnel pair** is declared by the tasks' roles, not their names: a task observed only
where another task's label is 1 (conversion, observed on clicks) follows that task. The pair
composes one more output, `COMPOSED` (p = p_first · p_second: an impression clicked and then
converted, "CTCVR"), declared here once; the loss (ESMM), the metrics, the scorer and the
export all read it by this name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np

COMPOSED = "ctcvr"  # the funnel pair's composed output: first task, then the second


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


@dataclass(frozen=True)
class FunnelPair:
    """`second` is observed only where `first`'s label is 1 (e.g. click → conversion)."""

    first: TaskSpec
    second: TaskSpec

    @property
    def composed_label(self) -> str:
        return f"{self.first.label}*{self.second.label}"

    def composed_probability(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """p(first and second) = p_first · p_second, per row."""
        return probs[self.first.name] * probs[self.second.name]

    def composed_labels(self, labels: Mapping[str, np.ndarray]) -> np.ndarray:
        return labels[self.first.label] * labels[self.second.label]

    def composed_log_prob(self, logits: Mapping):
        """log p(first and second) from the heads' logits, in log space (torch):
        logσ(first) + logσ(second), finite where the product would underflow."""
        import torch.nn.functional as F

        return F.logsigmoid(logits[self.first.name]) + F.logsigmoid(logits[self.second.name])


def funnel_pair(tasks: Mapping[str, TaskSpec], heads: Iterable[str] | None = None) -> FunnelPair | None:
    """The funnel pair among `tasks` (restricted to `heads` when given), by their roles."""
    names = list(tasks) if heads is None else [h for h in heads if h in tasks]
    by_label = {tasks[n].label: tasks[n] for n in names}
    for name in names:
        second = tasks[name]
        first = by_label.get(second.observed_when) if second.observed_when else None
        if first is not None and first.name != second.name:
            return FunnelPair(first, second)
    return None
