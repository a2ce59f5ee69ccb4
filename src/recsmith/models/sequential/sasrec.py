"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Item + learned position embeddings, then `num_layers` blocks of causal multi-head
self-attention and a point-wise feed-forward network, each with a residual connection,
LayerNorm and dropout. Hidden state t predicts item t+1 through the shared item table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsmith.models.sequential import ENCODERS
from recsmith.models.sequential.ops import causal_padding_mask, init_normal_

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention under a boolean `[B, L, L]` mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x `[B, L, D]`, allowed `[B, L, L]` (True = may attend) → `[B, L, D]`."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, L, 3, h, D/h] → 3 × [B, h, L, D/h]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))  # [B, h, L, D/h] → [B, L, D]


class TransformerBlock(nn.Module):
    """Self-attention then FFN, each `x + Dropout(f(x))`, LayerNorm before (pre-LN) or after (post-LN)."""

    def __init__(self, dim: int, num_heads: int, inner_dim: int, dropout: float, activation: str, norm_first: bool):
        super().__init__()
        self.norm_first = norm_first
        self.attention = SelfAttention(dim, num_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, inner_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                 nn.Linear(inner_dim, dim))
        self.attention_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), allowed))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, allowed)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


@ENCODERS.register("sasrec")
class SASRec(nn.Module):
    """items `[B, L]`, mask `[B, L]` → causal hidden `[B, L, hidden_dim]` (0 at padding).

    `norm_first=True` (pre-LN, as the paper's code) ends with a LayerNorm; post-LN (RecBole)
    normalises the input embeddings instead, its blocks already end in one.
    """

    def __init__(self, num_items: int, max_length: int, cfg, *, norm_first: bool = True, activation: str = "gelu"):
        super().__init__()
        dim = cfg.hidden_dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.input_norm = nn.Identity() if norm_first else nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, cfg.num_heads, cfg.inner_dim, cfg.dropout, activation, norm_first)
            for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        init_normal_(self)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = items.size(1)
        positions = torch.arange(length, device=items.device)
        x = self.item_embedding(items) + self.position_embedding(positions)  # [B, L, D]
        valid = mask.unsqueeze(-1)  # [B, L, 1]
        x = self.dropout(self.input_norm(x)) * valid
        # Every query may also see itself, so no softmax row is empty (an empty row is NaN);
        # this only adds keys for padded queries, valid ones always see themselves.
        allowed = causal_padding_mask(mask) | torch.eye(length, dtype=torch.bool, device=items.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x) * valid
