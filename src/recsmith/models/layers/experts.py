"""Experts for MMoE / PLE: builders by type, and a pool that stacks them to [B, E, H]."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from pydantic import Field, model_validator

from recsmith.config.schema import Strict, registered
from recsmith.models.layers.crossnet import CrossNetV2
from recsmith.models.layers.mlp import MLP
from recsmith.registry import Registry

# builder(spec, in_dim, dropout) -> module with .out_dim; spec is an ExpertSpec
EXPERTS: Registry[Callable[..., nn.Module]] = Registry("expert type")


class ExpertSpec(Strict):
    """One expert of a pool (MMoE, PLE): an MLP or a CrossNet-v2 (or any registered type)."""

    type: str
    hidden_dims: Optional[list[int]] = None
    num_layers: Optional[int] = Field(None, ge=1, le=16)

    _check_type = registered("type", "recsmith.models.layers.experts", "EXPERTS")

    @model_validator(mode="after")
    def _fields_for_type(self):
        if self.type == "mlp" and not self.hidden_dims:
            raise ValueError("an 'mlp' expert needs hidden_dims")
        if self.type == "crossnet_v2" and self.num_layers is None:
            raise ValueError("a 'crossnet_v2' expert needs num_layers")
        return self


def build_pool(specs: list[ExpertSpec], names: list[str], in_dim: int, dropout: float,
               project_to: int | None = None) -> "ExpertPool":
    """Experts built from `specs` (each projected to `project_to` when given: a mix of types
    differs in width), built one after the other, so initialisation follows the list."""
    experts = []
    for spec in specs:
        expert = EXPERTS.get(spec.type, "expert type")(spec, in_dim, dropout)
        experts.append(expert if project_to is None else Projected(expert, project_to))
    return ExpertPool(experts, names)


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
