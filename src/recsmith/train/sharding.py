"""Whether a run shards its embedding table (embedding.sharding), checked before TorchRec is
imported: recsmith.train.sharded_tables does the sharding, and needs TorchRec."""

from __future__ import annotations

import logging

import torch

from recsmith.errors import ConfigError
from recsmith.train.distributed import Distributed

log = logging.getLogger("recsmith.train")
INSTALL = "bash scripts/install_torchrec.sh"


def shard_tables(model, cfg, dist: Distributed, device: torch.device):
    """The run's ShardedTables, or None: `embedding.sharding: none`, or one process (which holds
    the whole table, as every rank of a replicated run does)."""
    setting = cfg.embedding.sharding
    if setting == "none":
        return None
    if not hasattr(model, "sharded_view"):
        raise ConfigError(f"embedding.sharding: {setting}: the {cfg.model.family} family's model has no table TorchRec "
                          "can shard (the ranking family's has): set embedding.sharding: none")
    if not dist.active:
        log.warning("embedding.sharding: %s has no ranks to cut the table over in one process: it trains whole "
                    "(start with --nproc N or torchrun to shard it)", setting)
        return None
    if cfg.optim.clip_grad_norm:
        raise ConfigError("optim.clip_grad_norm: not supported with embedding.sharding (the joint norm would need every "
                          "rank's table shards): set it to null, or embedding.sharding: none")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        from recsmith.train.sharded_tables import ShardedTables
    except ImportError as exc:
        raise ConfigError(f"embedding.sharding: {setting} needs TorchRec ({exc}): install it with {INSTALL}") from None
    finally:
        root.handlers[:] = handlers  # importing torchrec.distributed adds a stderr handler to the root logger
    tables = ShardedTables.build(model, cfg, dist, device)
    log.info("embedding table sharded %s over %d ranks (TorchRec, dense kernel, LazyAdam per shard): %s", setting,
             dist.world_size, tables.plan)
    return tables
