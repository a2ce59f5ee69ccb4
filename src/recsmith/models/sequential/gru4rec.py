"""GRU4Rec: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.

Item embedding → dropout → a stacked GRU over the session → a linear map back into the
item-embedding space, so hidden state t scores item t+1 against the shared item table.
"""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.sequential import ENCODERS
from recsmith.models.sequential.ops import init_normal_


@ENCODERS.register("gru4rec")
class GRU4Rec(nn.Module):
    """items `[B, L]`, mask `[B, L]` → causal hidden `[B, L, hidden_dim]` (0 at padding)."""

    def __init__(self, num_items: int, max_length: int, cfg):
        super().__init__()
        dim = cfg.hidden_dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(dim, dim, num_layers=cfg.num_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.projection = nn.Linear(dim, dim)
        init_normal_(self)  # embedding and projection; the GRU keeps PyTorch's init

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A GRU is causal by construction, and right padding only follows the valid steps,
        # so no packing is needed: padded steps never reach a valid one.
        hidden, _ = self.gru(self.dropout(self.item_embedding(items)))  # [B, L, D]
        return self.projection(hidden) * mask.unsqueeze(-1)
