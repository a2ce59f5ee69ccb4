"""A plain MLP: Linear → ReLU (→ Dropout) per hidden layer."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """`[B, in_dim]` → `[B, hidden_dims[-1]]` (or `[B, in_dim]` when hidden_dims is empty)."""

    def __init__(self, in_dim: int, hidden_dims: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        super().__init__(*layers)
        self.out_dim = in_dim
