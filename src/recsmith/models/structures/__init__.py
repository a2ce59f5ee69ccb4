"""Structures map the backbone output `[B, H]` to one representation per task.

A structure is a class registered in `STRUCTURES` under the name `model.mtl` selects, built
as `cls(in_dim, tasks, section, dropout)` where `section` is its own config: the validated
`model.<name>` mapping (an instance of its `config` class attribute, a pydantic model), or
None for a structure without settings. It exposes `out_dims` (task -> width) and
`gate_experts` (gate name -> expert names; empty without gates), and returns `(task
representations, gate weights)` from `forward(h)`. Class attributes `min_heads` /
`max_heads` bound how many heads it takes, and an optional classmethod
`check(section, heads)` raises ValueError for settings that do not fit the heads.
Shared-bottom, MMoE and PLE differ in configuration, not in copied code: experts, gates
and towers are shared.
"""

from recsmith.registry import Registry

STRUCTURES: Registry[type] = Registry("structure")

from recsmith.models.structures import mmoe, ple, shared_bottom  # noqa: E402,F401
