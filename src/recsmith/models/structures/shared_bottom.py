"""Hard parameter sharing: the backbone is the shared bottom, each task gets its tower."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.structures import STRUCTURES


@STRUCTURES.register("single")
@STRUCTURES.register("sharedbottom")
class SharedBottom(nn.Module):
    """Every task reads the shared representation as it is (one task: a plain model)."""

    def __init__(self, in_dim: int, tasks: list[str], model_cfg=None):
        super().__init__()
        self.tasks = list(tasks)
        self.out_dims = {task: in_dim for task in tasks}
        self.gate_experts: dict[str, list[str]] = {}

    def forward(self, h: torch.Tensor):
        return {task: h for task in self.tasks}, {}
