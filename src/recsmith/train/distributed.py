"""Several processes, one run: PyTorch's own engine (torch.distributed, DDP) under torchrun.

A process started by `torchrun` (or any launcher that sets `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) joins the process group on the backend for its
device: gloo on CPU, NCCL on CUDA. Semantics (docs/distributed.md):

* `data.batch_size` is the global batch: each optimizer step takes the same rows as one
  process would, each rank 1/world of them (recsmith.data.batches.TrainStream);
* every loss term is normalised by its count over the global batch (all ranks, all
  accumulation micro-batches), and gradients are averaged over the ranks (DDP for dense
  ones, `mean_sparse` for embedding tables' sparse ones), so a step equals one process's;
* rank 0 evaluates, writes the run dir (logs, metrics, checkpoints, eval.json, trackers)
  and tells the others what it decided; checkpoints hold every rank's RNG state.

`launch_command` builds the torchrun command line `recsmith ... --nproc N` runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from recsmith.errors import ConfigError

TIMEOUT = timedelta(seconds=int(os.environ.get("RECSMITH_DIST_TIMEOUT", "600")))  # a stuck collective ends here


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """[every rank's obj] on rank 0, None elsewhere."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor; `tensor` is left as it is)."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


    def mean_sparse(self, grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """The mean over ranks of a sparse COO gradient (None: this rank looked nothing up),
        as the concatenation of every rank's entries (in rank order) over world_size.

        Built from dense all_gathers rather than DDP's sparse all-reduce: gloo's sparse
        all-reduce corrupted the heap of a rank under LazyAdam within a few thousand steps
        (torch 2.13.0, `scripts/repro_gloo_sparse_crash.py`), and NCCL has none at all
        (pytorch/pytorch#22400); all_gather is on every backend."""
        if grad is None:
            grad = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.long), torch.empty((0, *shape[1:])), shape,
                                           check_invariants=True)
        indices, values = grad._indices(), grad._values()
        count = torch.tensor([values.shape[0]], device=values.device)
        counts = [torch.empty_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        most = max(counts)
        padded_indices = indices.new_zeros((indices.shape[0], most))
        padded_indices[:, : counts[self.rank]] = indices
        padded_values = values.new_zeros((most, *values.shape[1:]))
        padded_values[: counts[self.rank]] = values
        all_indices = [torch.empty_like(padded_indices) for _ in range(self.world_size)]
        all_values = [torch.empty_like(padded_values) for _ in range(self.world_size)]
        dist.all_gather(all_indices, padded_indices)
        dist.all_gather(all_values, padded_values)
        indices = torch.cat([part[:, :n] for part, n in zip(all_indices, counts)], dim=1)
        values = torch.cat([part[:n] for part, n in zip(all_values, counts)]).div_(self.world_size)
        return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)  # ids in range: O(nnz)


SINGLE = Distributed()


def sparse_gradient_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weights whose gradient is sparse (embeddings with sparse=True), by name."""
    return {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and module.sparse}


def data_parallel(model: torch.nn.Module, dist_: Distributed):
    """`model` in DDP, which averages the dense gradients; the sparse ones are left to
    `Distributed.mean_sparse` (the Trainer calls it after a step's backward)."""
    from torch.nn.parallel import DistributedDataParallel

    sparse = sparse_gradient_parameters(model)
    for weight in sparse.values():  # what DDP does for the parameters it keeps: every rank starts from rank 0's
        dist.broadcast(weight.data, src=0)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(sparse))
    return DistributedDataParallel(model, forward_sync_buffers=False)


def from_environment(device_type: str = "cpu") -> Distributed:
    """This process's place in the job (joining the process group on first use), or SINGLE."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(rank, world_size, local_rank)


def check_batch(batch_size: int, world_size: int, micro_batches: int) -> None:
    """The global batch must split evenly over ranks and accumulation steps."""
    if batch_size % (world_size * micro_batches):
        raise ConfigError(f"data.batch_size {batch_size} does not split into {world_size} rank(s) × "
                          f"{micro_batches} accumulation step(s) (optim.grad_accumulation_steps): make it a "
                          f"multiple of {world_size * micro_batches}")


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """`recsmith ARGS` as `nproc` processes on this machine, started by torchrun; each worker
    gets its share of the cores as threads (two PyTorch processes with every core each run
    many times slower than one)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "recsmith", *args]


def worker_environment(nproc: int) -> dict:
    """torchrun's environment: the workers' threads, and the process group's own TCP store
    (with the store shared with torchrun's rendezvous, workers restarted by --max-restarts
    read the previous round's addresses and fail to connect: pytorch/pytorch#135712)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")}
