"""MMoE (Ma et al. 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.layers.experts import ExpertPool
from recsmith.models.layers.gates import GATES, mix
from recsmith.models.layers.mlp import MLP
from recsmith.models.structures import STRUCTURES


@STRUCTURES.register("mmoe")
class MMoE(nn.Module):
    def __init__(self, in_dim: int, tasks: list[str], model_cfg):
        super().__init__()
        cfg = model_cfg.mmoe
        self.tasks = list(tasks)
        experts = [MLP(in_dim, cfg.expert_hidden_dims, model_cfg.dropout) for _ in range(cfg.num_experts)]
        self.experts = ExpertPool(experts, [f"expert{i}(mlp)" for i in range(cfg.num_experts)])
        gate = GATES.get(cfg.gate_type, "model.mmoe.gate_type")
        self.gates = nn.ModuleDict({t: gate(in_dim, cfg.num_experts) for t in tasks})
        self.out_dims = {t: self.experts.out_dim for t in tasks}
        self.gate_experts = {t: list(self.experts.names) for t in tasks}

    def forward(self, h: torch.Tensor):
        outputs = self.experts(h)  # [B, E, H]
        weights = {t: self.gates[t](h) for t in self.tasks}  # each [B, E]
        return {t: mix(weights[t], outputs) for t in self.tasks}, weights
