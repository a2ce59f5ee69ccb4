"""The embedding table cut over the ranks by TorchRec (embedding.sharding under torchrun).

TorchRec's DistributedModelParallel holds the shards of a `ShardedFeatureEmbedding` (one
table per field) and wraps the rest of the model in DDP: a forward sends each rank's ids to
the ranks that own their rows (all-to-all) and the looked-up rows back; dense gradients are
averaged by DDP, and the tables' gradients arrive at their owners averaged the same way
(TorchRec's gradient division), so a step equals one process's.

The model the Trainer was given keeps the fused table: it is what rank 0 evaluates, what
checkpoints hold and what is served, so nothing downstream depends on sharding. `load`
copies it into the shards when training starts (fresh, resumed or warm-started); `gather`
assembles the shards into rank 0's copy before each evaluation and checkpoint. Rank 0 so
needs room for the whole table (without its optimizer state), as it does to evaluate.

Kernel and optimizer: TorchRec's fused kernels apply the optimizer inside the backward,
and fbgemm's CPU kernels offer only SGD and Adagrad variants ("Optimizer adam is not
supported in CPU mode"). The dense compute kernel is used instead: it leaves each shard's
gradient in `.grad`, and recsmith's LazyAdam updates the shards (ShardedDualOptimizer).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, row_wise, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType

from recsmith.errors import ConfigError
from recsmith.registry import Registry
from recsmith.train.distributed import Distributed
from recsmith.train.optim import ShardedDualOptimizer, TableShard

# one warning per table that the dense kernel ignores the caching parameters it has none of
logging.getLogger("torchrec.distributed.utils").setLevel(logging.ERROR)
TABLES = "embedding.tables"  # where the EmbeddingBagCollection sits in the model's sharded view
DENSE = EmbeddingComputeKernel.DENSE.value
PLANS = Registry("embedding sharding")


@PLANS.register("table_wise")
def table_wise_plan(tables, world_size: int, device: torch.device, sharder) -> ShardingPlan:
    """Whole tables, field i on rank i mod world."""
    return _explicit(tables, sharder, world_size, device,
                     lambda i, width: table_wise(rank=i % world_size, compute_kernel=DENSE))


@PLANS.register("column_wise")
def column_wise_plan(tables, world_size: int, device: torch.device, sharder) -> ShardingPlan:
    """Every table cut into `world` column blocks (as even as the width allows), one per rank."""
    def generator(i: int, width: int):
        if width < world_size:
            raise ConfigError(f"embedding.sharding: column_wise cuts each table's {width} column(s) over {world_size} "
                              f"ranks: raise embedding.default_embedding_dim or use table_wise")
        return column_wise(size_per_rank=[width // world_size + (r < width % world_size) for r in range(world_size)],
                           compute_kernel=DENSE)

    return _explicit(tables, sharder, world_size, device, generator)


@PLANS.register("row_wise")
def row_wise_plan(tables, world_size: int, device: torch.device, sharder) -> ShardingPlan:
    """Every table cut into `world` blocks of rows, one per rank."""
    return _explicit(tables, sharder, world_size, device, lambda i, width: row_wise(compute_kernel=DENSE))


@PLANS.register("auto")
def planned(tables, world_size: int, device: torch.device, sharder) -> ShardingPlan:
    """TorchRec's planner chooses among the model-parallel types it offers on this device
    (data_parallel left out: a replicated table is embedding.sharding: none). It plans for its
    fused kernels, which it alone accepts with them; the shards then get the dense kernel
    (whose gradient it does not count in its memory estimate)."""
    types = [t for t in sharder.sharding_types(device.type) if t != ShardingType.DATA_PARALLEL.value]
    topology = TopologyFactory.create_topology(TrainerConfig(world_size=world_size),
                                              kernel_config=KernelConfig(compute_device=device.type))
    planner = EmbeddingShardingPlanner(topology=topology,
                                       constraints={name: ParameterConstraints(sharding_types=types)
                                                    for name in tables.embedding_bags})
    plan = planner.collective_plan(_Holder(tables), [sharder], torch_dist.group.WORLD)
    for sharding in plan.plan[TABLES].values():
        sharding.compute_kernel = DENSE
    return plan


class _Holder(torch.nn.Module):
    """The tables at the path they have in the model, so that the planner's plan names it."""

    def __init__(self, tables):
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.tables = tables


def _explicit(tables, sharder, world_size: int, device: torch.device, generator) -> ShardingPlan:
    names = list(tables.embedding_bags)
    per_table = {name: generator(i, tables.embedding_bags[name].weight.shape[1]) for i, name in enumerate(names)}
    return ShardingPlan({TABLES: construct_module_sharding_plan(tables, per_table, sharder=sharder,
                                                                world_size=world_size, device_type=device.type)})


class ModelParallel(DistributedModelParallel):
    def no_sync(self):
        """DDP's no_sync on the data-parallel part, for accumulation micro-batches (the tables'
        gradients cross the ranks in every backward: the forward's all-to-all needs them all)."""
        return self._dmp_wrapped_module.no_sync()


@dataclass
class ShardedTables:
    """The training network (DistributedModelParallel over the model's sharded view), its
    optimizer, and the copies between the shards and the model's fused table."""

    net: ModelParallel
    optimizer: ShardedDualOptimizer
    shards: list[TableShard]
    dist: Distributed

    @classmethod
    def build(cls, model, cfg, dist: Distributed, device: torch.device) -> "ShardedTables":
        view = model.sharded_view()
        sharder = EmbeddingBagCollectionSharder()
        plan = PLANS.get(cfg.embedding.sharding, "embedding.sharding")(view.embedding.tables, dist.world_size, device,
                                                                        sharder)
        net = ModelParallel(view, env=ShardingEnv.from_process_group(torch_dist.group.WORLD), device=device,
                            plan=plan, sharders=[sharder])
        shards = _local_shards(net, view.embedding, model.embedding.offsets.tolist())
        empty = int(dist.sum(torch.tensor(float(not shards), device=device)))  # every rank learns it, none hangs
        if empty:
            raise ConfigError(f"embedding.sharding: {cfg.embedding.sharding} leaves {empty} of {dist.world_size} ranks "
                              f"without a table shard ({len(view.embedding.fields)} "
                              "fields): use column_wise or row_wise, or fewer ranks")
        optimizer = ShardedDualOptimizer(shards, model.dense_parameters(), cfg.optim,
                                         tuple(model.embedding.table.weight.shape), dist)
        return cls(net, optimizer, shards, dist)

    @property
    def plan(self) -> str:
        """'13 tables table_wise on [0], 13 tables table_wise on [1]' (for the log)."""
        placed = Counter(f"{p.sharding_type} on {p.ranks}" for p in self.net.plan.plan[TABLES].values())
        return ", ".join(f"{count} table(s) {where}" for where, count in placed.items())

    @torch.no_grad()
    def load(self, model) -> None:
        """Every rank copies its shards out of its copy of the fused table (all ranks hold the same)."""
        table = model.embedding.table.weight
        for shard in self.shards:
            shard.weight.copy_(table[shard.rows, shard.columns])

    @torch.no_grad()
    def gather(self, model) -> None:
        """Rank 0's fused table ← every rank's shards (all ranks take part)."""
        pieces = self.dist.gather([(s.rows, s.columns, s.weight.detach().cpu()) for s in self.shards])
        if pieces is None:
            return
        table = model.embedding.table.weight
        for rows, columns, weight in (piece for rank in pieces for piece in rank):
            table[rows, columns] = weight.to(table.device)


def _local_shards(net: DistributedModelParallel, sharded, offsets: list[int]) -> list[TableShard]:
    """This rank's shards: where each sits in the fused table, and its weight (a view into
    TorchRec's kernel, its `.grad` the shard's gradient)."""
    parameters = dict(net.named_parameters())
    shards = []
    for key, value in net.state_dict().items():
        if not key.startswith(TABLES + "."):
            continue
        local = value.local_shards()
        if len(local) > 1:  # every plan here puts at most one block of a table on a rank
            raise RuntimeError(f"{key}: {len(local)} shards on one rank; one was expected")
        for piece in local:
            (row, column), (rows, columns) = piece.metadata.shard_offsets, piece.metadata.shard_sizes
            start = offsets[sharded.fields.index(key.split(".")[-2])] + row
            shards.append(TableShard(slice(start, start + rows), slice(column, column + columns), parameters[key]))
    return shards
