"""What `--resume` continues from: a finished run (nothing to train), the newest readable
checkpoint (ckpt_last.pt, else ckpt_best.pt: both hold the whole training state), or nothing
saved yet (a fresh start).

The config must be the one the run was trained with: a finished run is compared with its
config.yaml, a checkpoint with the config saved inside it. A difference is a ConfigError
naming the keys, raised before anything is written, so a run dir never mixes two configs
and the tracker never gets a row of one config beside another's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recsmith.config.diff import describe, differences
from recsmith.errors import ConfigError, DataError
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import UnreadableCheckpoint, load_checkpoint


@dataclass
class ResumePoint:
    """Where a run continues; all empty: a fresh start."""

    finished: dict | None = None  # eval.json of a complete run
    checkpoint: dict | None = None  # the training state to continue from
    path: Path | None = None  # the file `checkpoint` came from
    unreadable: list[UnreadableCheckpoint] = field(default_factory=list)  # newer checkpoints skipped


def resume_point(cfg, run: RunDir) -> ResumePoint:
    """Where `--resume` of `cfg` in `run` continues (see the module docstring)."""
    config = cfg.model_dump(mode="json")
    if run.eval.exists():
        diff = differences(saved_config(run), config)
        if diff:
            raise ConfigError(f"run {run.path} is complete, and the config differs from the one it was trained "
                              f"with ({describe(diff)}); nothing was written: train this config in a new run dir")
        return ResumePoint(finished=run.read_json(run.eval) or {})
    unreadable = []
    for path in (run.ckpt_last, run.ckpt_best):  # newest first
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except UnreadableCheckpoint as exc:
            unreadable.append(exc)
            continue
        diff = differences(state.get("config", {}), config)
        if diff:
            raise ConfigError(f"the config differs from the one {path} was trained with ({describe(diff)}); "
                              "resume with the same config and options (--init-from too), or start a new run dir")
        return ResumePoint(checkpoint=state, path=path, unreadable=unreadable)
    if unreadable:
        problems = "; ".join(f"{exc.path.name}: {exc.problem}" for exc in unreadable)
        raise DataError(f"no readable checkpoint in {run.path} to resume from ({problems}): start a new run dir, "
                        "or delete them to train this one from the start")
    return ResumePoint()


def saved_config(run: RunDir) -> dict:
    """The config.yaml a finished run was trained with."""
    try:
        data = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{run.config}: cannot read the config the finished run was trained with "
                        f"({exc.strerror or exc}), so --resume cannot check it is the same: start a new run "
                        "dir") from None
    except yaml.YAMLError:
        raise DataError(f"{run.config} is not valid YAML, so --resume cannot check the config is the one the "
                        "finished run was trained with: start a new run dir") from None
    return data if isinstance(data, dict) else {}

