"""Expert output aligner: lets experts of different kinds mix stably in one gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExpertOutputAligner(nn.Module):
    """`[B, E, H]` → `[B, E, H]`: per-expert LayerNorm, a learnable per-expert scale
    (initialised to 1) and dropout. An MLP and a CrossNet produce outputs of very
    different magnitudes; without this the gate mostly learns those magnitudes."""

    def __init__(self, num_experts: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(num_experts, dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.scale = nn.Parameter(torch.ones(num_experts))
        self.dropout = nn.Dropout(dropout)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(outputs, outputs.shape[-1:])  # per expert, over H
        normed = normed * self.norm_weight + self.norm_bias  # [B, E, H]
        return self.dropout(normed * self.scale[:, None])
