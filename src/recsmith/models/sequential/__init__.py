"""Sequential models.

Next-item encoders are registered in `ENCODERS` and built as `cls(num_items, max_length, cfg)`
(cfg = the `model.sequential` config). `forward(items [B, L], mask [B, L]) -> hidden [B, L, D]`
is causal and lives in the item-embedding space, so the trainer scores every position as
`hidden @ model.item_embedding.weight.T`; positions where mask is False come out as 0.
DIN scores one candidate against the history instead and is exported on its own.
"""

from recsmith.registry import Registry

ENCODERS: Registry[type] = Registry("sequential model")

from recsmith.models.sequential import avgpool, gru4rec, narm, sasrec  # noqa: E402,F401  (import registers)
from recsmith.models.sequential.din import DIN  # noqa: E402

__all__ = ["DIN", "ENCODERS"]
