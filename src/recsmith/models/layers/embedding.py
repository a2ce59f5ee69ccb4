"""One fused embedding table for all sparse fields (per-field row offsets, one gather)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureEmbedding(nn.Module):
    """Embeds `ids [B, F]` (per-field ids, 0 = unknown) to `[B, F, dim]`.

    All fields share one `nn.Embedding` whose rows are laid out field after field; a
    field's ids are shifted by its offset, so a batch costs one gather. With
    `with_bias=True` each row carries one extra column, the value's first-order (FM
    linear) weight, returned separately as `[B, F]`, still from the same gather.
    """

    def __init__(self, vocab_sizes: list[int], dim: int, sparse_grad: bool = True,
                 with_bias: bool = False, init_std: float = 0.01):
        super().__init__()
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"every field needs a vocabulary of at least 1, got {vocab_sizes}")
        self.dim, self.with_bias = dim, with_bias
        offsets = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets.to(torch.int32), persistent=False)
        self.table = nn.Embedding(sum(vocab_sizes), dim + int(with_bias), sparse=sparse_grad)
        with torch.no_grad():
            self.table.weight.normal_(0.0, init_std)
            if with_bias:
                self.table.weight[:, dim].zero_()

    @property
    def num_fields(self) -> int:
        return self.offsets.numel()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = self.table(ids + self.offsets)  # [B, F, dim (+1)]
        if not self.with_bias:
            return rows, None
        return rows[..., : self.dim], rows[..., self.dim]  # [B, F, dim], [B, F]
