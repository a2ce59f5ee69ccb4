"""Sequential models wrapped for the trainer: `forward(*batch.inputs)` → `{task: logits}`.

NextItemModel  an encoder from recsmith.models.sequential.ENCODERS; every position's
               hidden state scores all items through the (tied) item embedding, trained
               with cross-entropy over all items ("next_item").
DINRanker      DIN scores one candidate against the history, trained with BCE ("like").
"""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.sequential import DIN, ENCODERS
from recsmith.models.sequential.ops import gather_positions, last_valid_index


class SequentialBase(nn.Module):
    """What the trainer and optimizer expect of every model."""

    gate_experts: dict = {}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.item_embedding.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.item_embedding.weight]

    @property
    def item_embedding(self) -> nn.Embedding:
        return self.net.item_embedding


class NextItemModel(SequentialBase):
    tasks = ["next_item"]

    def __init__(self, num_items: int, cfg):
        super().__init__()
        self.net = ENCODERS.get(cfg.architecture, "model.sequential.architecture")(num_items, cfg.max_length, cfg)

    def forward(self, items: torch.Tensor, targets: torch.Tensor, source: torch.Tensor) -> dict[str, torch.Tensor]:
        """items, targets, source [B, L] (see recsmith.data.sequences.Windows) → logits
        [P, I] at the P positions with a target, in row-major order."""
        hidden = self.net(items, items > 0)  # [B, L, D]
        predicted = gather_positions(hidden, source)  # [B, L, D]: the state each target is predicted from
        return {"next_item": self.score_all(predicted[targets > 0])}

    def user_vectors(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items [N, L] right-padded histories, lengths [N] ≥ 1 → [N, D] at the last item."""
        mask = items > 0
        return gather_positions(self.net(items, mask), last_valid_index(mask)) * (lengths > 0).unsqueeze(-1)

    def score_all(self, vectors: torch.Tensor) -> torch.Tensor:
        """[N, D] → [N, I] logits of items 1..I (column j is item j + 1; padding is no class)."""
        return vectors @ self.item_embedding.weight[1:].T

    def score_candidates(self, items, lengths, ages, candidates) -> torch.Tensor:
        """Logits of `candidates` [N] for histories items [N, L]."""
        vectors = self.user_vectors(items, lengths)
        return (vectors * self.item_embedding(candidates)).sum(-1)


class DINRanker(SequentialBase):
    tasks = ["like"]

    def __init__(self, num_items: int, cfg):
        super().__init__()
        self.net = DIN(num_items, cfg.max_length, cfg)

    def forward(self, items: torch.Tensor, ages: torch.Tensor, candidates: torch.Tensor) -> dict[str, torch.Tensor]:
        """items, ages [B, L] (history and its age in days), candidates [B] → {"like": [B]}."""
        return {"like": self.net(items, ages, candidates)}

    def score_candidates(self, items, lengths, ages, candidates) -> torch.Tensor:
        return self.net(items, ages, candidates)


def build_sequential_model(num_items: int, cfg) -> SequentialBase:
    """The model `cfg.model.sequential` describes, initialised from `runtime.seed`."""
    from recsmith.models.sequential.architectures import ARCHITECTURES

    torch.manual_seed(cfg.runtime.seed)
    seq = cfg.model.sequential
    return ARCHITECTURES.get(seq.architecture, "model.sequential.architecture").model(num_items, seq)
