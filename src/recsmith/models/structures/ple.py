"""PLE (Tang et al. 2020): stacked extraction levels of shared and task-specific experts.

At each level, task t's gate mixes [its specific experts, the shared experts]; below the
last level a shared gate mixes all experts into the next level's shared input. Experts
are homogeneous MLPs, or (hetero_enabled) any listed mix of MLP and CrossNet-v2 experts
projected to `expert_dim`, optionally through the expert output aligner.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from recsmith.config.schema import Strict, registered
from recsmith.models.layers.aligner import ExpertOutputAligner
from recsmith.models.layers.experts import ExpertPool, ExpertSpec, build_pool
from recsmith.models.layers.gates import GATES, mix
from recsmith.models.structures import STRUCTURES

SHARED = "shared"


class HeteroExperts(Strict):
    shared: list[ExpertSpec]
    specific: dict[str, list[ExpertSpec]]


class AlignerConfig(Strict):
    """Expert output aligner: LayerNorm + learnable per-expert scale (init 1) + dropout."""

    enabled: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class PLEConfig(Strict):
    """`model.ple`: levels, shared and per-task experts (homogeneous MLPs, or the listed
    `experts` when `hetero_enabled`, projected to `expert_dim`), the aligner."""

    num_levels: int = Field(1, ge=1, le=8)
    shared_num_experts: int = Field(4, ge=1, le=64)
    specific_num_experts: dict[str, int] = {"ctr": 1, "cvr": 1}
    expert_hidden_dims: list[int] = [128, 64]
    gate_type: str = "linear"
    hetero_enabled: bool = False
    experts: Optional[HeteroExperts] = None
    expert_dim: int = Field(64, ge=1, le=4096, description="common output width of hetero experts")
    expert_output_align: AlignerConfig = Field(default_factory=AlignerConfig)

    _check_gate_type = registered("gate_type", "recsmith.models.layers.gates", "GATES")

    @model_validator(mode="after")
    def _hetero_consistent(self):
        if not self.hetero_enabled:
            return self
        if self.experts is None:
            raise ValueError("model.ple.experts: required when model.ple.hetero_enabled is true")
        if len(self.experts.shared) != self.shared_num_experts:
            raise ValueError(
                f"model.ple.shared_num_experts is {self.shared_num_experts} but "
                f"model.ple.experts.shared lists {len(self.experts.shared)} experts"
            )
        for task, count in self.specific_num_experts.items():
            listed = len(self.experts.specific.get(task, []))
            if listed != count:
                raise ValueError(
                    f"model.ple.specific_num_experts.{task} is {count} but "
                    f"model.ple.experts.specific.{task} lists {listed} experts"
                )
        return self


class ExtractionLevel(nn.Module):
    """One CGC level: pools for `shared` and each task, a gate per task (and a shared gate)."""

    def __init__(self, in_dim: int, tasks: list[str], specs: dict[str, list], cfg, dropout: float,
                 with_shared_gate: bool):
        super().__init__()
        self.tasks, self.with_shared_gate = list(tasks), with_shared_gate
        self.pools = nn.ModuleDict(
            {owner: self._pool(owner, owner_specs, in_dim, cfg, dropout) for owner, owner_specs in specs.items()}
        )
        gate = GATES.get(cfg.gate_type, "model.ple.gate_type")
        n_shared = len(self.pools[SHARED])
        self.gates = nn.ModuleDict({t: gate(in_dim, len(self.pools[t]) + n_shared) for t in tasks})
        if with_shared_gate:
            self.gates[SHARED] = gate(in_dim, sum(len(p) for p in self.pools.values()))
        self.aligner = None
        if cfg.hetero_enabled and cfg.expert_output_align.enabled:
            total = sum(len(p) for p in self.pools.values())
            self.aligner = ExpertOutputAligner(total, self.out_dim, cfg.expert_output_align.dropout)

    @staticmethod
    def _pool(owner: str, specs: list[ExpertSpec], in_dim: int, cfg: PLEConfig, dropout: float) -> ExpertPool:
        return build_pool(specs, [f"{owner}{i}({spec.type})" for i, spec in enumerate(specs)], in_dim, dropout,
                          cfg.expert_dim if cfg.hetero_enabled else None)

    @property
    def out_dim(self) -> int:
        return self.pools[SHARED].out_dim

    def gate_experts(self) -> dict[str, list[str]]:
        shared = self.pools[SHARED].names
        names = {t: self.pools[t].names + shared for t in self.tasks}
        if self.with_shared_gate:
            names[SHARED] = [n for pool in self.pools.values() for n in pool.names]
        return names

    def forward(self, inputs: dict[str, torch.Tensor]):
        # inputs: owner -> [B, in_dim]; each pool reads its owner's input
        outputs = {owner: pool(inputs[owner]) for owner, pool in self.pools.items()}  # [B, E_o, H]
        if self.aligner is not None:
            owners = list(outputs)
            aligned = self.aligner(torch.cat([outputs[o] for o in owners], dim=1))
            outputs = dict(zip(owners, aligned.split([outputs[o].shape[1] for o in owners], dim=1)))
        weights, mixed = {}, {}
        for t in self.tasks:
            weights[t] = self.gates[t](inputs[t])
            mixed[t] = mix(weights[t], torch.cat([outputs[t], outputs[SHARED]], dim=1))
        if self.with_shared_gate:
            weights[SHARED] = self.gates[SHARED](inputs[SHARED])
            mixed[SHARED] = mix(weights[SHARED], torch.cat(list(outputs.values()), dim=1))
        return mixed, weights


@STRUCTURES.register("ple")
class PLE(nn.Module):
    config = PLEConfig
    min_heads, max_heads = 2, None

    @classmethod
    def check(cls, cfg: PLEConfig, heads: list[str]) -> None:
        if set(cfg.specific_num_experts) != set(heads):
            raise ValueError(f"model.ple.specific_num_experts must have one entry per head {sorted(heads)}, "
                             f"got {sorted(cfg.specific_num_experts)}")
        if cfg.hetero_enabled and set(cfg.experts.specific) != set(heads):
            raise ValueError(f"model.ple.experts.specific must have one entry per head {sorted(heads)}")

    def __init__(self, in_dim: int, tasks: list[str], cfg: PLEConfig, dropout: float = 0.0):
        super().__init__()
        self.tasks = list(tasks)
        if cfg.hetero_enabled:
            specs = {SHARED: list(cfg.experts.shared), **{t: list(cfg.experts.specific[t]) for t in tasks}}
        else:
            homogeneous = ExpertSpec(type="mlp", hidden_dims=cfg.expert_hidden_dims)
            specs = {SHARED: [homogeneous] * cfg.shared_num_experts,
                     **{t: [homogeneous] * cfg.specific_num_experts[t] for t in tasks}}
        levels = []
        for level in range(cfg.num_levels):
            last = level == cfg.num_levels - 1
            levels.append(ExtractionLevel(in_dim, tasks, specs, cfg, dropout, not last))
            in_dim = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dims = {t: in_dim for t in tasks}
        self.gate_experts = {
            f"level{i}.{gate}": names
            for i, level in enumerate(self.levels) for gate, names in level.gate_experts().items()
        }

    def forward(self, h: torch.Tensor):
        inputs = {owner: h for owner in (SHARED, *self.tasks)}
        gates: dict[str, torch.Tensor] = {}
        for i, level in enumerate(self.levels):
            inputs, weights = level(inputs)
            gates.update({f"level{i}.{gate}": w for gate, w in weights.items()})
        return {t: inputs[t] for t in self.tasks}, gates
