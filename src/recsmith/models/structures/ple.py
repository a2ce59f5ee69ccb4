"""PLE (Tang et al. 2020): stacked extraction levels of shared and task-specific experts.

At each level, task t's gate mixes [its specific experts, the shared experts]; below the
last level a shared gate mixes all experts into the next level's shared input. Experts
are homogeneous MLPs, or (hetero_enabled) any listed mix of MLP and CrossNet-v2 experts
projected to `expert_dim`, optionally through the expert output aligner.
"""

from __future__ import annotations

import torch
from torch import nn

from recsmith.models.layers.aligner import ExpertOutputAligner
from recsmith.models.layers.experts import EXPERTS, ExpertPool, Projected
from recsmith.models.layers.gates import GATES, mix
from recsmith.models.structures import STRUCTURES

SHARED = "shared"


class _ExpertSpec:  # the homogeneous case, spelled like a config ExpertSpec
    def __init__(self, hidden_dims):
        self.type, self.hidden_dims, self.num_layers = "mlp", hidden_dims, None


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
    def _pool(owner: str, specs: list, in_dim: int, cfg, dropout: float) -> ExpertPool:
        experts, names = [], []
        for i, spec in enumerate(specs):
            expert = EXPERTS.get(spec.type, "model.ple.experts")(spec, in_dim, dropout)
            if cfg.hetero_enabled:
                expert = Projected(expert, cfg.expert_dim)
            experts.append(expert)
            names.append(f"{owner}{i}({spec.type})")
        return ExpertPool(experts, names)

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
    def __init__(self, in_dim: int, tasks: list[str], model_cfg):
        super().__init__()
        cfg = model_cfg.ple
        self.tasks = list(tasks)
        if cfg.hetero_enabled:
            specs = {SHARED: list(cfg.experts.shared), **{t: list(cfg.experts.specific[t]) for t in tasks}}
        else:
            homogeneous = _ExpertSpec(cfg.expert_hidden_dims)
            specs = {SHARED: [homogeneous] * cfg.shared_num_experts,
                     **{t: [homogeneous] * cfg.specific_num_experts[t] for t in tasks}}
        levels = []
        for level in range(cfg.num_levels):
            last = level == cfg.num_levels - 1
            levels.append(ExtractionLevel(in_dim, tasks, specs, cfg, model_cfg.dropout, not last))
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
