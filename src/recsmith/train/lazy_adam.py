"""LazyAdam: Adam for embedding tables with sparse gradients, updating only the rows a
batch touched. The same update as `torch.optim.SparseAdam`, without its cost.

For each touched row (its gradient summed over the batch, g):
    m ← m + (1 − β₁)(g − m),   v ← v + (1 − β₂)(g² − v)
    row ← row − lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (√v + ε)
where t counts the optimizer's steps. Rows a batch did not touch keep their value and
their moments: unlike dense Adam they are not decayed, which is what "lazy" means. For
rows touched at every step this is dense Adam (with ε scaled by √(1 − β₂ᵗ)).

SparseAdam spends most of its time coalescing the gradient (a sort of the batch's ids).
Here the touched rows are found with a marker array over the table's rows (one scatter,
one scan, no sort) when the table is not much larger than the batch, else with a sort.
"""

from __future__ import annotations

import math

import torch

MARKER_MAX_RATIO = 64  # use the marker array while rows ≤ 64 × gradient entries


class LazyAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid LazyAdam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self._markers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # scratch, never checkpointed

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("LazyAdam expects sparse gradients (nn.Embedding(sparse=True))")
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.int64)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                rows, grad = self._touched_rows(param)  # sorted unique rows, summed gradient
                exp_avg = state["exp_avg"].index_select(0, rows)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)
                exp_avg.lerp_(grad, 1 - beta1)  # m + (1 − β₁)(g − m)
                exp_avg_sq.lerp_(grad.square(), 1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                t = int(state["step"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                # select, subtract, copy back: rows are unique, and index_add_ on rows of a
                # few floats is several times slower on CPU
                param.index_copy_(0, rows, param.index_select(0, rows).sub_(update, alpha=step_size))
        return loss

    def _scratch(self, param: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A cleared marker array and a position array over the table's rows (reused)."""
        scratch = self._markers.get(id(param))
        if scratch is None or scratch[0].device != device:
            scratch = self._markers[id(param)] = (
                torch.zeros(param.shape[0], dtype=torch.bool, device=device),
                torch.empty(param.shape[0], dtype=torch.int64, device=device))
        return scratch

    def _touched_rows(self, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad = param.grad
        ids, values = grad._indices()[0], grad._values()  # uncoalesced: one entry per lookup
        if param.shape[0] <= MARKER_MAX_RATIO * max(ids.numel(), 1):
            marker, position = self._scratch(param, ids.device)
            marker.index_fill_(0, ids, True)
            rows = marker.nonzero().squeeze(1)  # sorted
            marker.index_fill_(0, rows, False)  # clean for the next step, touching only these rows
            position.index_copy_(0, rows, torch.arange(rows.numel(), device=ids.device))
            inverse = position.index_select(0, ids)
        else:
            rows, inverse = torch.unique(ids, return_inverse=True)
        return rows, _sum_rows(values, inverse, rows.numel())


def _sum_rows(values: torch.Tensor, inverse: torch.Tensor, n: int) -> torch.Tensor:
    """out[inverse[i]] += values[i]. Scattered column-wise into a transposed buffer: a
    row-wise index_add_ over rows of a few floats does one tiny add per lookup on CPU, and
    this needs no flattened index either."""
    columns = values.reshape(values.shape[0], -1).t()  # [width, nnz], a view
    out = torch.zeros(columns.shape[0], n, dtype=values.dtype, device=values.device)
    out.scatter_add_(1, inverse.expand(columns.shape[0], -1), columns)
    return out.t().contiguous().view(n, *values.shape[1:])
