"""Reproduces the heap corruption that made recsmith stop using DDP's sparse all-reduce.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 scripts/repro_gloo_sparse_crash.py ddp
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 scripts/repro_gloo_sparse_crash.py gather

Two ranks train an embedding table with sparse gradients (nn.Embedding(sparse=True)) and
a linear layer on random Zipf-like ids, the table updated by recsmith's LazyAdam. With
`ddp`, DDP averages the table's sparse gradient with gloo's sparse all-reduce; with
`gather`, DDP ignores the table and its gradient is averaged with dense all_gathers
(recsmith.train.distributed.Distributed.mean_sparse, what recsmith does).

Seen on a 2-core AMD EPYC, torch 2.13.0+cpu: `ddp` aborted with "malloc(): unaligned tcache
chunk detected" after 4,000-6,000 steps (and once in E1 of `recsmith chain run ... --nproc 2`,
at step ~1,750); `gather` ran 30,000 steps clean, and `ddp` with plain SGD instead of
LazyAdam ran 20,000 (the allocation pattern of the optimizer decides when the corruption
is caught, not whether it happens).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recsmith.train.distributed import Distributed
from recsmith.train.lazy_adam import LazyAdam

ROWS, FIELDS, DIM, BATCH = 300_000, 26, 9, 512


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(ROWS, DIM, sparse=True)
        self.head = torch.nn.Linear(FIELDS * DIM, 1)

    def forward(self, ids):
        return self.head(self.table(ids).flatten(1)).squeeze(1)


def main(mode: str, steps: int = 30_000) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = Model()
    if mode == "gather":
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["table.weight"])
    net = DistributedDataParallel(model)
    sparse, dense = LazyAdam([model.table.weight], lr=1e-3), torch.optim.Adam(model.head.parameters(), lr=1e-3)
    ranks = Distributed(rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(rank + 1)
    started = time.time()
    for step in range(steps):
        ids = (torch.rand(BATCH, FIELDS, generator=generator) ** 3 * ROWS).long()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(ids), torch.rand(BATCH, generator=generator))
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        if mode == "gather":
            model.table.weight.grad = ranks.mean_sparse(model.table.weight.grad, model.table.weight.shape)
        sparse.step()
        dense.step()
        if rank == 0 and step % 2000 == 0:
            print(f"step {step}  loss {loss.item():.4f}  {time.time() - started:.0f}s", flush=True)
    print(f"rank {rank}: {steps} steps, no crash", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ddp")
