"""The training loop. It sees a model that returns `{task: logits}` and a loss object
returning `(total, terms)`; optimizer, schedule, precision, evaluation cadence, best
selection and checkpoints come from the config. Under torchrun it runs on every rank with
the model wrapped in DDP (or, with embedding.sharding, in TorchRec's DistributedModelParallel:
recsmith.train.sharded_tables); rank 0 evaluates and writes (recsmith.train.distributed)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, Optional

import torch

from recsmith.errors import TrainingError
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import restore_rng_state, rng_state, save_checkpoint
from recsmith.train.distributed import SINGLE, Distributed, check_batch, data_parallel, sparse_gradient_parameters
from recsmith.train.optim import build_optimizer
from recsmith.train.schedule import build_schedulers, observe_validation
from recsmith.train.sharding import shard_tables

log = logging.getLogger("recsmith.train")


class BestTracker:
    """Keeps the best value of the primary key; NaN never wins."""

    def __init__(self, key: str, mode: str):
        self.key, self.mode = key, mode
        self.value: float | None = None
        self.step: int | None = None

    def decide(self, step: int, value: float) -> dict:
        before = {"best_value_before": self.value, "best_step_before": self.step}
        improved = not math.isnan(value) and (
            self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        )
        if improved:
            self.value, self.step = value, step
        return {"type": "valid_decision", "step": step, "primary_key": self.key, "mode": self.mode,
                "value": value, **before, "improved": improved,
                "best_value": self.value, "best_step": self.step}


class Trainer:
    def __init__(self, cfg, run: RunDir, model, loss_fn, stream, evaluate_valid: Callable, device, precision,
                 dist: Distributed = SINGLE):
        """`evaluate_valid(model) -> (metrics, GateStats)` scores the validation split (on rank 0)."""
        missing = set(loss_fn.required_logits) - set(model.tasks)
        if missing:
            raise TrainingError(f"the loss needs logits {sorted(missing)} that the model does not produce")
        self.cfg, self.run, self.model, self.loss_fn, self.dist = cfg, run, model, loss_fn, dist
        torch.set_flush_denormal(cfg.runtime.flush_denormal)  # process-wide; denormals are slow on CPUs
        parts = cfg.optim.grad_accumulation_steps
        check_batch(cfg.data.batch_size, dist.world_size, parts)
        if dist.active or parts > 1:
            stream = stream.shard(dist.rank, dist.world_size, parts)
        # what the forward pass runs through: DDP averages the dense gradients over ranks; a sharded table's
        # shards live in TorchRec's wrapper, `model` keeps the whole table (evaluated, checkpointed)
        self.sharded = shard_tables(model, cfg, dist, device)
        if self.sharded:
            self.net, self.optimizer = self.sharded.net, self.sharded.optimizer
        else:
            self.net = data_parallel(model, dist) if dist.active else model
            self.optimizer = build_optimizer(model, cfg)
        # the tables' sparse gradients, which DDP leaves to Distributed.mean_sparse
        self.sparse_weights = sparse_gradient_parameters(model) if dist.active and not self.sharded else {}
        self.stream, self.evaluate_valid, self.device, self.precision = stream, evaluate_valid, device, precision
        self.schedulers = build_schedulers(self.optimizer, cfg.lr_scheduler)
        self.scaler = precision.grad_scaler()
        selection = cfg.runtime.best_selection
        self.best = BestTracker(selection.primary_key, selection.mode)
        self.step = 0
        self.seconds = 0.0  # training + validation time, against runtime.max_train_seconds
        self.eval_seconds = 0.0  # the validation part of it
        self.stop_reason = "max_train_steps"
        self.precisions = [precision.name]  # every precision that trained this run, in order (resumes)

    # ------------------------------------------------------------------ the loop
    def fit(self, on_step: Optional[Callable[[int, dict], None]] = None) -> None:
        rt = self.cfg.runtime
        self.model.train()
        if self.sharded:  # the whole table as it is now (fresh, resumed or warm-started) into the shards
            self.sharded.load(self.model)
        batches = iter(self.stream)
        running, count, tick = torch.zeros((), device=self.device), 0, time.perf_counter()
        self._clock = time.perf_counter()
        while self.step < rt.max_train_steps:
            loss, terms = self.train_step(next(batches))
            running, count = running + loss.detach(), count + 1
            last = self.step == rt.max_train_steps or self._out_of_epochs() or self._out_of_budget()
            if self.step % rt.log_every_steps == 0 or last:
                record = self._log_train(running / count, terms, count, time.perf_counter() - tick)
                running, count, tick = torch.zeros((), device=self.device), 0, time.perf_counter()
                if on_step and self.dist.is_main:
                    on_step(self.step, record)
            if self.step % rt.eval_every_steps == 0 or last:
                self.evaluate_and_checkpoint()
                tick = time.perf_counter()  # samples_per_s measures training only
                last = last or self._patience_exhausted()
            if last:
                break

    def _out_of_epochs(self) -> bool:
        """runtime.max_train_epochs passes over the training data done (a machine-independent budget)."""
        epochs = self.cfg.runtime.max_train_epochs
        if epochs and self.step * self.cfg.data.batch_size >= epochs * len(self.stream.data):
            self.stop_reason = "max_train_epochs"
            return True
        return False

    def _out_of_budget(self) -> bool:
        """runtime.max_train_seconds spent (training and validation, earlier sessions included)."""
        now = time.perf_counter()
        self.seconds, self._clock = self.seconds + now - self._clock, now
        if not self.cfg.runtime.max_train_seconds:
            return False
        if self.dist.broadcast(self.seconds >= self.cfg.runtime.max_train_seconds):  # rank 0's clock decides
            self.stop_reason = "max_train_seconds"
            return True
        return False

    def _patience_exhausted(self) -> bool:
        patience = self.cfg.runtime.early_stopping_patience
        if patience and self.best.step is not None and self.step - self.best.step >= patience * self.cfg.runtime.eval_every_steps:
            self.stop_reason = "early_stopping"
            return True
        return False

    def train_step(self, batch) -> tuple[torch.Tensor, dict]:
        """One update: forward, loss, backward (over a step's micro-batches when accumulating),
        clipping, both optimizers, both schedules. Returns this rank's share of the step's loss
        and terms (the whole of them in one process)."""
        parts = batch if isinstance(batch, list) else [batch]
        counts = self._step_counts(parts) if self.dist.active or len(parts) > 1 else None
        self.optimizer.zero_grad()
        loss, terms = torch.zeros((), device=self.device), {}
        for i, part in enumerate(parts):
            part = part.to(self.device)
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last or not self.dist.active else self.net.no_sync():
                with self.precision.autocast():
                    logits = self.net(*part.inputs)
                # the loss in fp32: under autocast the logits come out in bf16/fp16, whose 8-bit (or
                # 11-bit) mantissa would round ESMM's log-space terms (logsigmoid sums, log1mexp)
                logits = {task: value.float() for task, value in logits.items()}
                part_loss, part_terms = (self.loss_fn(logits, part.labels, counts) if counts is not None
                                         else self.loss_fn(logits, part.labels))
                scaled = part_loss * self.dist.world_size if self.dist.active else part_loss  # DDP averages
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss = loss + part_loss.detach()
            terms = {k: terms.get(k, 0.0) + v.detach() for k, v in part_terms.items()}
        for weight in self.sparse_weights.values():  # DDP averaged the dense gradients in the last backward
            weight.grad = self.dist.mean_sparse(weight.grad, weight.shape)
        if self.cfg.optim.clip_grad_norm:
            self._clip_gradients(self.cfg.optim.clip_grad_norm)
        self.optimizer.step(self.scaler)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return loss, terms

    def _step_counts(self, parts: list) -> dict[str, torch.Tensor]:
        """Each loss term's row count over the whole step: every micro-batch, every rank."""
        if not hasattr(self.loss_fn, "counts"):
            raise TrainingError(f"{type(self.loss_fn).__name__} has no counts(): its steps cannot be split over "
                                "ranks or accumulation steps (recsmith.train.losses)")
        total: dict[str, torch.Tensor] = {}
        for part in parts:
            for key, value in self.loss_fn.counts(part.labels).items():
                total[key] = total.get(key, 0.0) + value.to(self.device)
        return {key: self.dist.sum(value) for key, value in total.items()}

    def _clip_gradients(self, max_norm: float) -> None:
        """Scale every gradient (the embedding table's sparse one included) so that their joint
        L2 norm is at most `max_norm` (torch's clip_grad_norm_ rule, sparse-aware)."""
        if self.scaler:
            for optimizer in self.optimizer.optimizers.values():
                self.scaler.unscale_(optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norms = [(g.coalesce().values() if g.is_sparse else g).norm() for g in grads]
        total = torch.linalg.vector_norm(torch.stack(norms))
        factor = max_norm / (total + 1e-6)
        if factor < 1.0:
            for g in grads:
                g.mul_(factor)

    def _log_train(self, mean_loss: torch.Tensor, terms: dict, steps: int, seconds: float) -> dict:
        value = float(self.dist.sum(mean_loss))  # ranks hold shares of each step's loss
        terms = {k: self.dist.sum(v) for k, v in terms.items()}
        if not math.isfinite(value):
            raise TrainingError(
                f"loss is {value} at step {self.step}: training diverged "
                f"(lower optim.dense.lr / optim.sparse.lr, or check the input data)"
            )
        record = {"type": "train", "step": self.step, "loss": value,
                  **{k: float(v.detach()) for k, v in terms.items()},
                  **{f"lr_{k}": v for k, v in self.optimizer.lrs().items()},
                  "samples_per_s": steps * self.cfg.data.batch_size / max(seconds, 1e-9)}
        if self.dist.is_main:
            RunDir.append(self.run.metrics, record)
        return record

    def evaluate_and_checkpoint(self) -> None:
        """Rank 0 scores the validation split; every rank takes the same decision from it."""
        started = time.perf_counter()
        gates = None
        if self.sharded:
            self.sharded.gather(self.model)
        if self.dist.is_main:
            metrics, gates = self.evaluate_valid(self.model)
        metrics = self.dist.broadcast(metrics if self.dist.is_main else None)
        decision = self.best.decide(self.step, metrics[self.best.key])
        observe_validation(self.schedulers, decision["improved"])
        state = self.state_dict()  # gathers every rank's RNG state: all ranks take part
        if self.dist.is_main:
            RunDir.append(self.run.metrics, {"type": "valid", "step": self.step, **metrics})
            RunDir.append(self.run.metrics, decision)
            for record in gates.report(self.model.gate_experts):
                RunDir.append(self.run.health, {"step": self.step, **record})
            if decision["improved"]:
                save_checkpoint(self.run.ckpt_best, state)
            save_checkpoint(self.run.ckpt_last, state)
        self.dist.barrier()  # a checkpoint is on disk before any rank goes on
        self.eval_seconds += time.perf_counter() - started
        log.info("step %d  valid %s=%.6f  best %.6f @ %d  loss=%.5f  (%.1fs)", self.step, self.best.key,
                 metrics[self.best.key], self.best.value if self.best.value is not None else float("nan"),
                 self.best.step or 0, metrics["loss"], time.perf_counter() - started)

    def precision_record(self) -> dict:
        """What trained this run (every session's precision, in order) and what scored it."""
        return {**self.precision.record(), "train": " then ".join(self.precisions)}

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state() if not self.dist.active else self.dist.gather(rng_state()),  # a list: one per rank
            "world_size": self.dist.world_size,
            "data": self.stream.state(),
            "best": {"value": self.best.value, "step": self.best.step},
            "train_seconds": self.seconds,
            "eval_seconds": self.eval_seconds,
            "precisions": self.precisions,
            "config": self.cfg.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state["rng"], int(state.get("world_size", 1)))
        self.stream.load_state(state["data"])
        self.best.value, self.best.step = state["best"]["value"], state["best"]["step"]
        self.step = int(state["step"])
        self.seconds = float(state.get("train_seconds", 0.0))
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
        earlier = list(state.get("precisions", []))
        if earlier and earlier[-1] != self.precision.name:
            log.warning("this run trained in %s before and continues in %s (%s)", earlier[-1], self.precision.name,
                        self.precision.reason)
        self.precisions = earlier + [self.precision.name] if earlier[-1:] != [self.precision.name] else earlier

    def _restore_rng(self, saved, world_size: int) -> None:
        """This rank's RNG state; at another world size the data order continues (positions
        are global) but the random draws (dropout) start afresh, as with a new seed."""
        if world_size == self.dist.world_size:
            restore_rng_state(saved[self.dist.rank] if isinstance(saved, list) else saved)
        else:
            log.warning("this run trained with %d process(es) and continues with %d: the data order continues "
                        "exactly, random draws (dropout) do not", world_size, self.dist.world_size)
