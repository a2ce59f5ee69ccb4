"""The dual optimizer: a sparse Adam for the embedding table, Adam/AdamW for the rest."""

from __future__ import annotations

from dataclasses import dataclass

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
        sparse_params = list(sparse_params)
        if not sparse_params:  # a model without embedding tables of its own (a transformer): one optimizer
            self.sparse = None
        elif sparse_grad:
            self.sparse = SPARSE_OPTIMIZERS[s.type](sparse_params, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
        else:  # dense embedding gradients: plain Adam at the sparse learning rate
            self.sparse = torch.optim.Adam(sparse_params, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
        self.dense = DENSE_OPTIMIZERS[d.type](
            dense_params, lr=d.lr, betas=tuple(d.betas), eps=d.eps, weight_decay=d.weight_decay, fused=d.fused
        )

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        both = {"sparse": self.sparse, "dense": self.dense}
        return {name: opt for name, opt in both.items() if opt is not None}

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


@dataclass(frozen=True)
class TableShard:
    """One rank's block of the fused embedding table (recsmith.train.sharded_tables)."""

    rows: slice  # of the fused table
    columns: slice
    weight: torch.Tensor  # a view into the sharding kernel's storage; its .grad is the block's dense gradient


class ShardedDualOptimizer(DualOptimizer):
    """The DualOptimizer of a table cut into shards over the ranks: each rank's LazyAdam updates
    its blocks of the fused table, Adam/AdamW the (data-parallel) dense weights.

    TorchRec's dense kernel leaves a dense gradient per block; its rows that are not all zero
    are the touched ones, handed to LazyAdam as a sparse gradient. Adam is elementwise, so this
    is LazyAdam's step on the whole table, up to the order of the floating-point sums, with one
    exception: a row looked up whose summed gradient is exactly zero in every column of a block
    counts as untouched there, where the unsharded LazyAdam decays its moments and moves it.

    `state_dict` gathers the moments into the fused table's layout on rank 0 (every rank takes
    part) and `load_state_dict` cuts that layout, so checkpoints are those of `sharding: none`.
    """

    def __init__(self, shards: list[TableShard], dense_params, optim_cfg, table_shape: tuple[int, int], dist):
        self.shards, self.table_shape, self.dist = shards, table_shape, dist
        # LazyAdam's own parameters: plain tensors over the blocks' storage, whose .grad can be sparse
        self.blocks = [torch.nn.Parameter(shard.weight.detach(), requires_grad=False) for shard in shards]
        super().__init__(self.blocks, dense_params, optim_cfg, sparse_grad=True)

    def zero_grad(self) -> None:
        super().zero_grad()
        for shard in self.shards:
            shard.weight.grad = None

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        for shard, block in zip(self.shards, self.blocks):
            grad = shard.weight.grad  # None where no rank looked up a row of this block: an empty step
            block.grad = (grad if grad is not None else torch.zeros_like(block)).to_sparse(1)
        super().step(scaler)

    def state_dict(self) -> dict:
        """The unsharded layout on rank 0; {} for the sparse part elsewhere (never saved)."""
        return {"sparse": self._gathered_sparse_state(), "dense": self.dense.state_dict()}

    def _gathered_sparse_state(self) -> dict:
        mine = self.sparse.state_dict()
        pieces = self.dist.gather([(shard.rows, shard.columns, {k: v.cpu() for k, v in mine["state"].get(i, {}).items()})
                                   for i, shard in enumerate(self.shards)])
        if pieces is None:
            return {}
        pieces = [piece for rank in pieces for piece in rank]
        state = {}
        if all(moments for _, _, moments in pieces):  # every block has stepped (none has before the first step)
            whole = {name: torch.zeros(self.table_shape) for name in ("exp_avg", "exp_avg_sq")}
            for rows, columns, moments in pieces:
                for name, value in whole.items():
                    value[rows, columns] = moments[name]
            state = {0: {"step": pieces[0][2]["step"], **whole}}
        group = {key: value for key, value in mine["param_groups"][0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": [0]}]}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        sparse = state["sparse"]
        whole = sparse["state"].get(0)
        blocks = {} if whole is None else {
            i: {"step": _own(whole["step"]), "exp_avg": whole["exp_avg"][shard.rows, shard.columns].clone(),
                "exp_avg_sq": whole["exp_avg_sq"][shard.rows, shard.columns].clone()}
            for i, shard in enumerate(self.shards)}
        self.sparse.load_state_dict({"state": blocks, "param_groups": [
            {**sparse["param_groups"][0], "params": list(range(len(self.blocks)))}]})


def _own(step):
    """A step counter of a block's own: LazyAdam counts in place (`+= 1`), so blocks sharing
    one tensor would count each step once per block."""
    return step.clone() if torch.is_tensor(step) else step


def build_optimizer(model, cfg) -> DualOptimizer:
    return DualOptimizer(model.sparse_parameters(), model.dense_parameters(), cfg.optim,
                         sparse_grad=cfg.embedding.sparse_grad)
