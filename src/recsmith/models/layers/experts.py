"""Experts for MMoE / PLE: builders by type, and a pool that stacks them to [B, E, H]."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from recsmith.models.layers.crossnet import CrossNetV2
from recsmith.models.layers.mlp import MLP
from recsmith.registry import Registry

# builder(spec, in_dim, dropout) -> module with .out_dim; spec has .hidden_dims / .num_layers
EXPERTS: Registry[Callable[..., nn.Module]] = Registry("expert type")


@EXPERTS.register("mlp")
def mlp_expert(spec, in_dim: int, dropout: float) -> nn.Module:
    return MLP(in_dim, list(spec.hidden_dims), dropout)


@EXPERTS.register("crossnet_v2")
def crossnet_expert(spec, in_dim: int, dropout: float) -> nn.Module:
    return CrossNetV2(in_dim, spec.num_layers)


class Projected(nn.Module):
    """An expert followed by a linear map to a common width (for heterogeneous pools)."""

    def __init__(self, expert: nn.Module, out_dim: int):
        super().__init__()
        self.expert, self.proj, self.out_dim = expert, nn.Linear(expert.out_dim, out_dim), out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.expert(x))


class ExpertPool(nn.Module):
    """Runs each expert on its input and stacks the outputs: `[B, in]` → `[B, E, H]`."""

    def __init__(self, experts: list[nn.Module], names: list[str]):
        super().__init__()
        widths = {e.out_dim for e in experts}
        if len(widths) != 1:
            raise ValueError(f"experts in one pool must share an output width, got {sorted(widths)}")
        self.experts, self.names, self.out_dim = nn.ModuleList(experts), names, widths.pop()

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)
