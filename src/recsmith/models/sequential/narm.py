"""NARM: Li et al., "Neural Attentive Session-based Recommendation", CIKM 2017.

A GRU reads the session. At every position t the global encoder is h_t, the local encoder
attends from h_t over h_0..h_t:
    α_tj = vᵀ σ(A₁ h_t + A₂ h_j),   c_local(t) = Σ_{j≤t} α_tj h_j   (not softmax-normalised),
and c_t = [h_t ; c_local(t)] is mapped by the bilinear decoder B (2H → hidden_dim), so the
scores c_t B Eᵀ are the trainer's `hidden @ item_embedding.weight.T`. All t are computed
at once under a `[B, L, L]` causal mask.
"""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.sequential import ENCODERS
from recsmith.models.sequential.ops import causal_padding_mask, init_normal_


@ENCODERS.register("narm")
class NARM(nn.Module):
    """items `[B, L]`, mask `[B, L]` → causal hidden `[B, L, hidden_dim]` (0 at padding)."""

    def __init__(self, num_items: int, max_length: int, cfg):
        super().__init__()
        dim = cfg.hidden_dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(dim, dim, num_layers=cfg.num_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.query_proj = nn.Linear(dim, dim, bias=False)  # A₁
        self.key_proj = nn.Linear(dim, dim, bias=False)  # A₂
        self.energy = nn.Linear(dim, 1, bias=False)  # v
        self.context_dropout = nn.Dropout(cfg.dropout)
        self.bilinear = nn.Linear(2 * dim, dim, bias=False)  # B
        init_normal_(self)  # the GRU keeps PyTorch's init

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embedding_dropout(self.item_embedding(items)))  # [B, L, H]
        # [B, L(t), 1, H] + [B, 1, L(j), H] → [B, L, L, H] → α [B, L, L]
        pre = self.query_proj(h).unsqueeze(2) + self.key_proj(h).unsqueeze(1)
        alpha = self.energy(torch.sigmoid(pre)).squeeze(-1)
        alpha = alpha.masked_fill(~causal_padding_mask(mask), 0.0)  # α_tj = 0 for j > t or padded j
        local = alpha @ h  # [B, L, L] @ [B, L, H] → [B, L, H]
        context = torch.cat([h, local], dim=-1)  # c_t = [h_t ; c_local(t)]: [B, L, 2H]
        return self.bilinear(self.context_dropout(context)) * mask.unsqueeze(-1)
