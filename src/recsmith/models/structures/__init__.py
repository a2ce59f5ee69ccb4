"""Structures map the backbone output `[B, H]` to one representation per task.

Every structure is built as `cls(in_dim, tasks, model_cfg)`, exposes `out_dims`
(task -> width) and `gate_experts` (gate name -> expert names; empty without gates), and
returns `(task representations, gate weights)` from `forward(h)`. Shared-bottom, MMoE and
PLE differ in configuration, not in copied code: experts, gates and towers are shared.
"""

from recsmith.registry import Registry

STRUCTURES: Registry[type] = Registry("structure")

from recsmith.models.structures import mmoe, ple, shared_bottom  # noqa: E402,F401
