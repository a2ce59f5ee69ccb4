"""One training run, start to finish: run dir, data, model, trainer, final test evaluation."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.config.loader import dump_yaml
from recsmith.data.compatibility import check_experiment_fits
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.env_info import environment
from recsmith.errors import ConfigError
from recsmith.plugins import family_of
from recsmith.run_dir import RunDir
from recsmith.train.distributed import Distributed, from_environment
from recsmith.train.precision import Precision, resolve_precision
from recsmith.train.resume import ResumePoint, resume_point
from recsmith.train.trainer import Trainer
from recsmith.train.warm_start import configure as configure_warm_start
from recsmith.train.warm_start import old_run, warm_start

log = logging.getLogger("recsmith.train")


def resolve_device(setting: str) -> torch.device:
    """The device of this process (under torchrun on GPUs: the GPU of its LOCAL_RANK)."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' requested but no CUDA device is available")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else setting
    if kind == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(kind)


def attach_log_file(run: RunDir) -> logging.Handler:
    handler = logging.FileHandler(run.log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("recsmith")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def train_run(cfg, run_path: str | Path, resume: bool = False,
              on_step: Optional[Callable[[int, dict], None]] = None,
              data_progress=None, on_end: Optional[Callable[[str, float, dict], None]] = None) -> dict:
    """Train `cfg` in `run_path` (or continue it with `resume`, from the newest readable checkpoint:
    recsmith.train.resume); returns eval.json's content.
    With `runtime.init_from` the model starts from that run's weights (recsmith.train.warm_start).
    `on_end(status, started, result)` hears how a run that started ended: "success" with
    eval.json's content, "failed" / "interrupted" with {} (recsmith.experiments.tracking
    records it); a finished run resumed with the same config trains nothing and calls nothing.
    Started by torchrun, every rank calls this; rank 0 prepares the data, writes the run dir
    and calls `on_step` / `on_end` (recsmith.train.distributed)."""
    run = RunDir(run_path)
    cfg = configure_warm_start(cfg)  # sets data.extend_vocab_from before the data is prepared
    device = resolve_device(cfg.runtime.device)
    dist = from_environment(device.type)
    if not dist.is_main:  # one rank speaks; the others only warn
        logging.getLogger("recsmith").setLevel(logging.WARNING)
    if run.has_run() and not resume:
        raise ConfigError(f"run dir {run.path} already holds a run: pass --resume, or choose another dir")
    point = resume_point(cfg, run) if resume else ResumePoint()  # a changed config fails before any write
    if point.finished is not None:
        log.info("run %s is already complete (same config): nothing to train", run.path)
        return point.finished
    dataset_dir = _dataset(cfg, dist, data_progress)  # bad data fails before the run dir exists
    check_experiment_fits(cfg, DatasetSchema.load(dataset_dir))
    handler = None
    if dist.is_main:
        run.create()
        handler = attach_log_file(run)
    started = time.time()
    try:
        result = _train(cfg, run, point, on_step, dataset_dir, device, dist)
    except BaseException as exc:
        if on_end and dist.is_main:
            on_end("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", started, {})
        raise
    finally:
        if handler:
            logging.getLogger("recsmith").removeHandler(handler)
            handler.close()
    if on_end and dist.is_main:
        on_end("success", started, result)
    return result


def _dataset(cfg, dist: Distributed, progress) -> Path:
    """Rank 0 prepares the dataset (or finds it in the cache); the others read it after."""
    if dist.is_main:
        dataset_dir = resolve_dataset(cfg.data, progress)
    dist.barrier()
    return dataset_dir if dist.is_main else resolve_dataset(cfg.data)


def _train(cfg, run: RunDir, point: ResumePoint, on_step, dataset_dir: Path, device: torch.device,
           dist: Distributed) -> dict:
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    owner = family_of(cfg)
    fitted = owner.fitted(cfg)
    if fitted and dist.active:
        raise ConfigError(f"a fitted model ({cfg.model.family}) is fitted by one process: run it without --nproc "
                          "/ torchrun")
    precision = (Precision("fp32", device.type, "a fitted model: no autocast") if fitted
                 else resolve_precision(cfg.runtime.amp, device))
    if dist.is_main:
        write_text_atomic(run.config, dump_yaml(cfg.model_dump(mode="json")))
        write_json_atomic(run.env, {**environment(device, precision.describe()), "world_size": dist.world_size})

    if fitted:
        started = time.perf_counter()
        result = {"name": cfg.name, "primary_key": cfg.runtime.best_selection.primary_key,
                  **owner.fit(cfg, run, dataset_dir), "dataset": str(dataset_dir), "precision": precision.record()}
        result["train_seconds"] = result["train_seconds_this_session"] = round(time.perf_counter() - started, 2)
        write_json_atomic(run.eval, result)
        return result
    setup = owner.setup(cfg, dataset_dir, device)
    model = setup.model
    trainer = Trainer(cfg, run, model, setup.loss_fn, setup.stream, setup.evaluate_valid, device, precision, dist)
    if point.checkpoint is not None:
        trainer.load_state_dict(point.checkpoint)
        if dist.is_main:
            for path in (run.metrics, run.health):
                RunDir.truncate_after_step(path, trainer.step)
        for skipped in point.unreadable:
            log.warning("%s is unreadable: %s; resuming from the next newest checkpoint", skipped.path, skipped.problem)
        log.info("resumed from %s at step %d", point.path.name, trainer.step)
    else:  # a fresh start: records of an attempt that never reached a checkpoint go
        if dist.is_main:
            for path in (run.metrics, run.health):
                path.unlink(missing_ok=True)
        log.info("training %s: %s, %d parameters, %s on %s%s", cfg.name, setup.describe(),
                 sum(p.numel() for p in model.parameters()), precision.describe(), device,
                 f", {dist.world_size} processes (DDP)" if dist.active else "")
        if cfg.runtime.init_from:
            done = warm_start(model, cfg.runtime.init_from, dataset_dir)
            log.info("init_from %s (its best step %d): %d tensors copied, %d embedding rows kept, %d new rows "
                     "freshly initialised; the optimizer starts fresh", done["run"], done["step"],
                     done["tensors_copied"], done["embedding_rows_kept"], done["embedding_rows_new"])
    started = time.perf_counter()
    trainer.fit(on_step)
    train_seconds = time.perf_counter() - started
    if not dist.is_main:
        return dist.broadcast(None)  # rank 0's eval.json

    result = {"name": cfg.name, "primary_key": cfg.runtime.best_selection.primary_key,
              "max_train_steps": cfg.runtime.max_train_steps, **setup.final_evaluation(run, dataset_dir)}
    result["valid"] = valid_at_best(run, result["best_step"])
    result.update(dataset=str(dataset_dir), precision=trainer.precision_record(), budget=cfg.runtime.budget(),
                  parameters=sum(p.numel() for p in model.parameters()), world_size=dist.world_size,
                  stop_reason=trainer.stop_reason, train_seconds=round(trainer.seconds, 2),
                  valid_seconds=round(trainer.eval_seconds, 2),
                  steps=trainer.step, epochs=round(trainer.step * cfg.data.batch_size / len(setup.stream.data), 3))
    result["train_seconds_this_session"] = round(train_seconds, 2)
    if cfg.runtime.init_from:
        result["init_from"] = old_run(cfg.runtime.init_from).record()
    write_json_atomic(run.eval, result)
    log.info("done: best %s=%.6f at step %s; test %s=%.6f", result["primary_key"],
             result["valid"].get(result["primary_key"], float("nan")), result["best_step"],
             result["primary_key"], result["test"].get(result["primary_key"], float("nan")))
    return dist.broadcast(result)


def valid_at_best(run: RunDir, best_step: int) -> dict:
    """The validation metrics recorded at the best step."""
    records = [r for r in RunDir.read_jsonl(run.metrics) if r.get("type") == "valid" and r.get("step") == best_step]
    return {k: v for k, v in records[-1].items() if k not in ("type", "step")} if records else {}
