"""MMoE (Ma et al. 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from recsmith.config.schema import Strict, registered
from recsmith.models.layers.experts import ExpertSpec, build_pool
from recsmith.models.layers.gates import GATES, mix
from recsmith.models.structures import STRUCTURES


class MMoEConfig(Strict):
    """`model.mmoe`: `num_experts` MLPs of `expert_hidden_dims`, or any registered experts
    listed in `experts` (each projected to `expert_dim`, since their widths differ)."""

    num_experts: int = Field(4, ge=1, le=64)
    gate_type: str = "linear"
    expert_hidden_dims: list[int] = [128, 64]
    experts: Optional[list[ExpertSpec]] = None
    expert_dim: int = Field(64, ge=1, le=4096, description="common output width of listed experts")

    _check_gate_type = registered("gate_type", "recsmith.models.layers.gates", "GATES")

    @model_validator(mode="after")
    def _experts_counted(self):
        if self.experts is not None and len(self.experts) != self.num_experts:
            raise ValueError(f"model.mmoe.num_experts is {self.num_experts} but model.mmoe.experts lists "
                             f"{len(self.experts)} experts")
        return self


@STRUCTURES.register("mmoe")
class MMoE(nn.Module):
    config = MMoEConfig
    min_heads, max_heads = 2, None

    def __init__(self, in_dim: int, tasks: list[str], section: MMoEConfig, dropout: float = 0.0):
        super().__init__()
        self.tasks = list(tasks)
        if section.experts is None:
            specs, project_to = [ExpertSpec(type="mlp", hidden_dims=section.expert_hidden_dims)] * section.num_experts, None
        else:
            specs, project_to = section.experts, section.expert_dim
        self.experts = build_pool(specs, [f"expert{i}({s.type})" for i, s in enumerate(specs)], in_dim, dropout,
                                  project_to)
        gate = GATES.get(section.gate_type, "model.mmoe.gate_type")
        self.gates = nn.ModuleDict({t: gate(in_dim, section.num_experts) for t in tasks})
        self.out_dims = {t: self.experts.out_dim for t in tasks}
        self.gate_experts = {t: list(self.experts.names) for t in tasks}

    def forward(self, h: torch.Tensor):
        outputs = self.experts(h)  # [B, E, H]
        weights = {t: self.gates[t](h) for t in self.tasks}  # each [B, E]
        return {t: mix(weights[t], outputs) for t in self.tasks}, weights
