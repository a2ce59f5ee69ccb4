"""FeatureEmbedding's tables as a TorchRec EmbeddingBagCollection, for sharding over ranks.

Needs TorchRec (`bash scripts/install_torchrec.sh`); nothing imports this module unless
`embedding.sharding` asks for it (recsmith.train.sharding).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from recsmith.models.layers.embedding import FeatureEmbedding


class ShardedFeatureEmbedding(nn.Module):
    """FeatureEmbedding's interface, `ids [B, F]` → `([B, F, dim], [B, F] or None)`, over one
    table per field in an EmbeddingBagCollection that DistributedModelParallel can shard.

    Field f's table is rows `offsets[f] : offsets[f] + vocab[f]` of the fused table, with the
    same `dim (+1)` columns (the FM first-order column stays beside its vector), so the fused
    table is the concatenation of these tables. They are created on the meta device: the
    shards hold the weights, copied from a FeatureEmbedding (recsmith.train.sharding).
    """

    def __init__(self, vocab_sizes: list[int], dim: int, with_bias: bool):
        super().__init__()
        self.dim, self.with_bias = dim, with_bias
        self.fields = [f"field_{i}" for i in range(len(vocab_sizes))]
        self.tables = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=name, embedding_dim=dim + int(with_bias), num_embeddings=rows,
                               feature_names=[name], pooling=PoolingType.SUM)
            for name, rows in zip(self.fields, vocab_sizes)], device=torch.device("meta"))
        self._order: tuple[tuple[str, ...], torch.Tensor] | None = None  # the output's key order → field order

    @classmethod
    def like(cls, fused: FeatureEmbedding) -> "ShardedFeatureEmbedding":
        """The tables of `fused`'s fields (their weights still to be copied)."""
        starts = fused.offsets.long()
        ends = torch.cat([starts[1:], torch.tensor([fused.table.num_embeddings], device=starts.device)])
        return cls((ends - starts).tolist(), fused.dim, fused.with_bias)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = ids.shape[0]
        # one id per field and row: feature-major values, every length 1 (a bag of one, summed = the row)
        features = KeyedJaggedTensor(keys=self.fields, values=ids.t().reshape(-1),
                                     lengths=torch.ones(batch * self.num_fields, dtype=torch.int32, device=ids.device))
        pooled = self.tables(features)  # KeyedTensor, [B, F · (dim + 1)] in the keys' order
        values = pooled.values().view(batch, self.num_fields, -1)
        rows = values.index_select(1, self._field_order(pooled.keys(), values.device))
        if not self.with_bias:
            return rows, None
        return rows[..., : self.dim], rows[..., self.dim]  # [B, F, dim], [B, F]

    def _field_order(self, keys: list[str], device: torch.device) -> torch.Tensor:
        """Table-wise sharding returns the fields grouped by rank (f0, f2, f1 on 2 ranks): the
        positions that put them back in field order (computed once per key order)."""
        if self._order is None or self._order[0] != tuple(keys):
            position = {key: i for i, key in enumerate(keys)}
            self._order = (tuple(keys), torch.tensor([position[f] for f in self.fields], device=device))
        return self._order[1]
