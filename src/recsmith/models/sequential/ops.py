"""Sequence helpers shared by the sequential models: masks, position gathers, initialisation.

Sequences are right-padded: the valid positions of a row are a prefix, `mask` [B, L] is True
on them.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`[L, L]` bool, True where query t may attend to key j (j ≤ t)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def causal_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """mask `[B, L]` → `[B, L, L]` bool: query t may attend to key j iff j ≤ t and j is valid.

    A row whose query position has no valid key (an all-padding sequence) is all False.
    """
    return causal_mask(mask.size(1), mask.device) & mask.unsqueeze(1)  # [L, L] & [B, 1, L] → [B, L, L]


def gather_positions(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden `[B, L, D]`, index `[B]` or `[B, K]` (long) → `[B, D]` or `[B, K, D]`."""
    batch, _, dim = hidden.shape
    flat = index.reshape(batch, -1).long()  # [B, K]
    picked = hidden.gather(1, flat.unsqueeze(-1).expand(-1, -1, dim))  # [B, K, D]
    return picked.reshape(*index.shape, dim)


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """mask `[B, L]` (right-padded) → `[B]` long index of the last valid position (0 if none)."""
    return (mask.sum(1) - 1).clamp(min=0)


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) weights and zero biases for every Linear and Embedding (RecBole's SASRec
    init); the padding row of an embedding stays 0. Other modules (GRU, LayerNorm) keep theirs."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=std)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
        if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
            with torch.no_grad():
                sub.weight[sub.padding_idx].zero_()
