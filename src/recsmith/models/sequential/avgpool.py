"""AvgPool: the order-free baseline of sequential recommendation.

Hidden state t is the mean of the embeddings of items 0..t (a causal cumulative mean),
optionally followed by one linear layer; it scores item t+1 against the shared item table.
"""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.sequential import ENCODERS
from recsmith.models.sequential.ops import init_normal_


@ENCODERS.register("avgpool")
class AvgPool(nn.Module):
    """items `[B, L]`, mask `[B, L]` → causal hidden `[B, L, hidden_dim]` (0 at padding)."""

    def __init__(self, num_items: int, max_length: int, cfg, *, project: bool = True):
        super().__init__()
        dim = cfg.hidden_dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.projection = nn.Linear(dim, dim) if project else nn.Identity()
        init_normal_(self)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.unsqueeze(-1).to(self.item_embedding.weight.dtype)  # [B, L, 1]
        total = (self.dropout(self.item_embedding(items)) * valid).cumsum(1)  # [B, L, D]
        count = valid.cumsum(1).clamp(min=1.0)  # [B, L, 1]
        return self.projection(total / count) * valid
