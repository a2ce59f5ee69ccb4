"""The dual optimizer: a sparse Adam for the embedding table, Adam/AdamW for the rest."""

from __future__ import annotations

import torch

from recsmith.train.lazy_adam import LazyAdam

DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SPARSE_OPTIMIZERS = {"lazy_adam": LazyAdam, "sparse_adam": torch.optim.SparseAdam}


class DualOptimizer:
    """Two optimizers stepped together, each with its own learning rate.

    Embedding rows get sparse gradients (only the rows a batch touched), which LazyAdam
    (or `torch.optim.SparseAdam`, the same update, slower) applies to those rows only;
    dense weights use Adam or AdamW.
    """

    def __init__(self, sparse_params, dense_params, optim_cfg, sparse_grad: bool = True):
        s, d = optim_cfg.sparse, optim_cfg.dense
        if sparse_grad:
            self.sparse = SPARSE_OPTIMIZERS[s.type](sparse_params, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
        else:  # dense embedding gradients: plain Adam at the sparse learning rate
            self.sparse = torch.optim.Adam(sparse_params, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
        self.dense = DENSE_OPTIMIZERS[d.type](
            dense_params, lr=d.lr, betas=tuple(d.betas), eps=d.eps, weight_decay=d.weight_decay, fused=d.fused
        )

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"sparse": self.sparse, "dense": self.dense}

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        for opt in self.optimizers.values():
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
        if scaler is not None:
            scaler.update()

    def lrs(self) -> dict[str, float]:
        return {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def build_optimizer(model, cfg) -> DualOptimizer:
    return DualOptimizer(model.sparse_parameters(), model.dense_parameters(), cfg.optim,
                         sparse_grad=cfg.embedding.sparse_grad)
