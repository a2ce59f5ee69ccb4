"""Gates for mixtures of experts: `[B, in_dim]` → softmax weights `[B, num_experts]`."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.registry import Registry

GATES: Registry[type] = Registry("gate type")


@GATES.register("linear")
class LinearGate(nn.Module):
    """softmax(W x + b), the MMoE paper's gate."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(x), dim=-1)


@GATES.register("mlp")
class MLPGate(nn.Module):
    """softmax(W₂ relu(W₁ x)): a gate with one hidden layer of width in_dim // 2."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        hidden = max(in_dim // 2, num_experts)
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(x), dim=-1)


def mix(weights: torch.Tensor, expert_outputs: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum: weights `[B, E]`, expert_outputs `[B, E, H]` → `[B, H]`."""
    return torch.einsum("be,beh->bh", weights.to(expert_outputs.dtype), expert_outputs)
