"""Hard parameter sharing: the backbone is the shared bottom, each task gets its tower."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.structures import STRUCTURES


@STRUCTURES.register("sharedbottom")
class SharedBottom(nn.Module):
    """Every task reads the shared representation as it is."""

    config = None
    min_heads, max_heads = 2, None

    def __init__(self, in_dim: int, tasks: list[str], section=None, dropout: float = 0.0):
        super().__init__()
        self.tasks = list(tasks)
        self.out_dims = {task: in_dim for task in tasks}
        self.gate_experts: dict[str, list[str]] = {}

    def forward(self, h: torch.Tensor):
        return {task: h for task in self.tasks}, {}


@STRUCTURES.register("single")
class Single(SharedBottom):
    """One task on the backbone: a plain model."""

    min_heads, max_heads = 1, 1
