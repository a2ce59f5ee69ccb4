"""Factorization-machine second-order interaction, kept as a vector."""

from __future__ import annotations

import torch
from torch import nn


class FMInteraction(nn.Module):
    """`[B, F, D]` → `[B, D]`: ½((Σ_f e_f)² − Σ_f e_f²); summing it over D gives the FM
    pairwise term Σ_{f<g} <e_f, e_g>."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        total = emb.sum(dim=1)  # [B, D]
        return 0.5 * (total * total - (emb * emb).sum(dim=1))
