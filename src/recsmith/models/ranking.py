"""The ranking model, composed: FeatureEmbedding → backbone → structure → towers → heads."""

from __future__ import annotations

import copy

import torch
from torch import nn

from recsmith.data.schema import DatasetSchema
from recsmith.models.backbones import BACKBONES
from recsmith.models.layers.embedding import FeatureEmbedding
from recsmith.models.layers.mlp import MLP
from recsmith.models.structures import STRUCTURES


class Tower(nn.Module):
    """A task's own MLP and its logit: `[B, in_dim]` → `[B]`."""

    def __init__(self, in_dim: int, hidden_dims: list[int], dropout: float):
        super().__init__()
        self.mlp = MLP(in_dim, hidden_dims, dropout)
        self.logit = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.mlp(x)).squeeze(-1)


class RankingModel(nn.Module):
    """`forward(sparse [B, F] ids, dense [B, D])` → task logits `{"ctr": [B], "cvr": [B]}`.

    With `with_gates=True` it also returns the gate weights of MMoE / PLE structures
    (`{gate name: [B, E]}`), for expert health diagnostics. Probabilities are only made
    when predicting; ESMM's ctcvr is a composition of the ctr and cvr logits in the loss.
    """

    def __init__(self, schema: DatasetSchema, cfg):
        super().__init__()
        model_cfg, emb_cfg = cfg.model, cfg.embedding
        backbone_cls = BACKBONES.get(model_cfg.backbone, "model.backbone")
        self.embedding = FeatureEmbedding(
            schema.vocab_sizes, emb_cfg.default_embedding_dim, sparse_grad=emb_cfg.sparse_grad,
            with_bias=getattr(backbone_cls, "needs_first_order", False),
        )
        self.backbone = backbone_cls(
            num_fields=len(schema.sparse), embedding_dim=emb_cfg.default_embedding_dim,
            num_dense=len(schema.dense), deep_hidden_dims=model_cfg.deep_hidden_dims,
            fm_projection_dim=model_cfg.fm_projection_dim, dropout=model_cfg.dropout,
        )
        self.tasks = list(model_cfg.enabled_heads)
        structure_cls = STRUCTURES.get(model_cfg.mtl, "model.mtl")
        self.structure = structure_cls(self.backbone.out_dim, self.tasks, model_cfg.section(model_cfg.mtl),
                                       model_cfg.dropout)
        self.towers = nn.ModuleDict({
            t: Tower(self.structure.out_dims[t], model_cfg.tower_hidden_dims, model_cfg.dropout)
            for t in self.tasks
        })

    @property
    def gate_experts(self) -> dict[str, list[str]]:
        return self.structure.gate_experts

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.embedding.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def sharded_view(self) -> "RankingModel":
        """This model looking its features up in TorchRec tables, one per field, for
        `embedding.sharding` to cut over the ranks (recsmith.train.sharded_tables). Every other
        module, so every dense weight, is this model's own; this model keeps the fused table,
        which is what is evaluated, checkpointed and served."""
        from recsmith.models.layers.sharded_embedding import ShardedFeatureEmbedding  # TorchRec: an optional extra

        view = copy.copy(self)  # shallow: the same submodules, then a table of its own
        view._modules = {**self._modules, "embedding": ShardedFeatureEmbedding.like(self.embedding)}
        return view

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, with_gates: bool = False):
        emb, first_order = self.embedding(sparse)
        h = self.backbone(emb, first_order, dense)  # [B, H]
        task_inputs, gates = self.structure(h)
        logits = {t: self.towers[t](task_inputs[t]).float() for t in self.tasks}
        return (logits, gates) if with_gates else logits


def build_model(schema: DatasetSchema, cfg) -> RankingModel:
    """The model an ExperimentConfig describes, initialised from `runtime.seed`."""
    torch.manual_seed(cfg.runtime.seed)
    return RankingModel(schema, cfg)
