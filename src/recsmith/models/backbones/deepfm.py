"""DeepFM (Guo et al. 2017) as a representation backbone for single- and multi-task heads."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.backbones import BACKBONES
from recsmith.models.layers.fm import FMInteraction
from recsmith.models.layers.mlp import MLP


@BACKBONES.register("deepfm")
class DeepFM(nn.Module):
    """Embedded fields → `[B, 1 + fm_projection_dim + deep_hidden_dims[-1]]`.

    The three DeepFM parts are kept as features for the structure above, not summed into
    a logit: the FM first-order sum (1), the FM pairwise-interaction vector projected to
    `fm_projection_dim`, and the deep MLP over the flattened embeddings and dense fields.
    """

    needs_first_order = True  # the embedding supplies a per-value linear weight

    def __init__(self, num_fields: int, embedding_dim: int, num_dense: int,
                 deep_hidden_dims: list[int], fm_projection_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fm = FMInteraction()
        self.fm_projection = nn.Linear(embedding_dim, fm_projection_dim)
        self.deep = MLP(num_fields * embedding_dim + num_dense, deep_hidden_dims, dropout)
        self.out_dim = 1 + fm_projection_dim + self.deep.out_dim

    def forward(self, emb: torch.Tensor, first_order: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        # emb [B, F, D], first_order [B, F], dense [B, Dd]
        linear = first_order.sum(dim=1, keepdim=True)  # [B, 1]
        pairwise = self.fm_projection(self.fm(emb))  # [B, P]
        deep = self.deep(torch.cat([emb.flatten(1), dense], dim=1))  # [B, H]
        return torch.cat([linear, pairwise, deep], dim=1)
