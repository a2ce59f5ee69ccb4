"""Warm start, the daily model update: a new ranking run starts from a finished run's weights.

`recsmith train CONFIG --init-from RUN_DIR` (config key `runtime.init_from`):
1. `configure` points `data.extend_vocab_from` at the old run's dataset (`eval.json`'s
   "dataset") unless the config sets it, for sources that can extend vocabularies: the new
   data is then encoded with the old encoders extended, so a known value keeps its id and a
   new one gets an id after all known ones (recsmith.features.encoders).
2. `warm_start` copies the old run's best checkpoint into the freshly built model. In each
   fused embedding table (`FeatureEmbedding`; its first-order weight is a column of the same
   rows) field by field: rows 0..old_size-1 go to the field's new offset, rows of new ids
   keep their fresh initialisation. Every other parameter and buffer is copied as is; a
   missing one or a shape that differs is a different architecture, a ConfigError.
The optimizer and the learning-rate schedule start fresh: their state belongs to the old
table's layout and the old run's steps. A resumed warm-started run reads its own
checkpoint, which already holds the weights, so nothing is copied again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recsmith.config.loader import read_yaml
from recsmith.data.schema import VOCAB_FILE, DatasetSchema
from recsmith.errors import ConfigError
from recsmith.models.layers.embedding import FeatureEmbedding
from recsmith.plugins import family_of
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import load_checkpoint

KEY = "runtime.init_from"


@dataclass
class OldRun:
    """A finished ranking run to start from: its dir, dataset and best step."""

    path: Path
    dataset: Path
    step: int

    def record(self) -> dict:
        """What eval.json keeps under "init_from"."""
        return {"run": str(self.path), "step": self.step, "dataset": str(self.dataset)}


def old_run(init_from: str | Path) -> OldRun:
    """The finished ranking run at `init_from`, checked; a ConfigError says what is missing."""
    run = RunDir(Path(init_from).expanduser().resolve())
    if not run.eval.is_file() or not run.ckpt_best.is_file():
        raise ConfigError(f"{KEY}: {run.path} is not a finished run (needs eval.json and ckpt_best.pt)")
    family = (read_yaml(run.config).get("model") or {}).get("family", "ranking") if run.config.is_file() else "ranking"
    if family != "ranking":
        raise ConfigError(f"{KEY}: {run.path} is a {family} run; warm start takes a ranking run")
    result = json.loads(run.eval.read_text(encoding="utf-8"))
    dataset = Path(result.get("dataset", "")).expanduser().resolve()
    if not result.get("dataset") or not dataset.is_dir():
        raise ConfigError(f"{KEY}: the dataset of {run.path} ({result.get('dataset')}) is gone; "
                          "the new data's encoders must extend the ones its weights were trained on")
    return OldRun(run.path, dataset, int(result["best_step"]))


def configure(cfg):
    """`cfg` with `data.extend_vocab_from` set to the old run's dataset when warm-starting
    (unless set already, or the source cannot extend: its ids are fixed)."""
    from recsmith.data.sources import can_extend_vocab

    if not cfg.runtime.init_from:
        return cfg
    if not family_of(cfg).warm_startable:
        raise ConfigError(f"{KEY}: model.family '{cfg.model.family}' cannot be warm-started")
    old = old_run(cfg.runtime.init_from)
    if cfg.data.extend_vocab_from is None and can_extend_vocab(cfg.data.source):
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"extend_vocab_from": str(old.dataset)})})
    return cfg


def warm_start(model: nn.Module, init_from: str | Path, dataset_dir: Path) -> dict:
    """Copy the best weights of the run at `init_from` into `model`, built for the
    dataset at `dataset_dir` (see the module docstring); returns what was done."""
    old = old_run(init_from)
    checkpoint = load_checkpoint(old.path / "ckpt_best.pt")
    before, after = DatasetSchema.load(old.dataset), DatasetSchema.load(dataset_dir)
    check_extends(old.dataset, before, dataset_dir, after)
    tables = {f"{prefix}.table.weight" if prefix else "table.weight"
              for prefix, module in model.named_modules() if isinstance(module, FeatureEmbedding)}
    old_state, state = checkpoint["model"], model.state_dict()  # state's tensors are the model's own
    problems = [f"{name} only in the old model" for name in old_state if name not in state]
    problems += [f"{name} only in the new model" for name in state if name not in old_state]
    for name in (n for n in state if n in old_state):
        old_shape, shape = tuple(old_state[name].shape), tuple(state[name].shape)
        fits = (old_shape[1:] == shape[1:] and old_shape[0] == sum(before.vocab_sizes)) if name in tables \
            else old_shape == shape
        if not fits:
            problems.append(f"{name} {old_shape} → {shape}")
    if problems:
        raise ConfigError(f"{KEY}: the model differs from the one {old.path} trained (a different architecture): "
                          f"{'; '.join(problems[:8])}{' ...' if len(problems) > 8 else ''}")
    old_rows, new_rows = row_maps(before.vocab_sizes, after.vocab_sizes)
    with torch.no_grad():
        for name, value in state.items():
            if name in tables:  # known ids' rows move to the field's new offset; new ids' rows stay fresh
                value[new_rows.to(value.device)] = old_state[name][old_rows].to(value.device, value.dtype)
            else:
                value.copy_(old_state[name])
    return {**old.record(), "tensors_copied": len(state), "embedding_rows_kept": len(new_rows),
            "embedding_rows_new": sum(after.vocab_sizes) - sum(before.vocab_sizes)}


def row_maps(old_sizes: list[int], new_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of the old fused table, their rows in the new one): each field's ids
    0..old_size-1, at the field's old and new offsets."""
    old_offsets = torch.tensor([0, *old_sizes[:-1]]).cumsum(0)
    new_offsets = torch.tensor([0, *new_sizes[:-1]]).cumsum(0)
    ids = [torch.arange(size) for size in old_sizes]
    return (torch.cat([i + o for i, o in zip(ids, old_offsets)]),
            torch.cat([i + o for i, o in zip(ids, new_offsets)]))


def check_extends(old_dir: Path, before: DatasetSchema, new_dir: Path, after: DatasetSchema) -> None:
    """A ConfigError unless the new dataset's encoders extend the old one's: the same
    fields in the same order; a vocabulary's known values at their old ids; every other
    encoder fitted the same (or, without fitted encoders, the same sizes)."""
    if before.sparse_names != after.sparse_names or before.dense_names != after.dense_names:
        raise ConfigError(f"{KEY}: the new dataset's fields differ from those the old run trained on: "
                          f"{before.sparse_names + before.dense_names} → {after.sparse_names + after.dense_names}")
    old_states, new_states = _states(old_dir), _states(new_dir)
    sizes = dict(zip(before.sparse_names, zip(before.vocab_sizes, after.vocab_sizes)))
    differing = []
    for name in before.sparse_names + before.dense_names:
        old, new = old_states.get(name), new_states.get(name)
        if old is None or new is None or "kind" not in old or "kind" not in new:  # not fitted by FeaturePipeline
            same = name not in sizes or sizes[name][0] == sizes[name][1]
        elif old["kind"] == new["kind"] == "vocab":
            same = new["values"][: len(old["values"])] == old["values"]
        else:
            same = old == new
        if not same:
            differing.append(name)
    if differing:
        raise ConfigError(f"{KEY}: the new dataset encodes {', '.join(differing)} differently from {old_dir} "
                          f"(known values must keep their ids, fitted statistics their values): prepare it with data.extend_vocab_from={old_dir}")


def _states(directory: Path) -> dict:
    try:
        return json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

