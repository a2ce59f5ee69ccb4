"""CrossNet-v2 (DCN-v2, Wang et al. 2021): explicit bounded-degree feature crosses."""

from __future__ import annotations

import torch
from torch import nn


class CrossNetV2(nn.Module):
    """`[B, d]` → `[B, d]`: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l, full-rank W_l."""

    def __init__(self, in_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))
        self.out_dim = in_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
