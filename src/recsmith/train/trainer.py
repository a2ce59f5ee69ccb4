"""The training loop. It sees a model that returns `{task: logits}` and a loss object
returning `(total, terms)`; optimizer, schedule, precision, evaluation cadence, best
selection and checkpoints come from the config."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import torch

from recsmith.errors import TrainingError
from recsmith.run_dir import RunDir
from recsmith.train.checkpoint import restore_rng_state, rng_state, save_checkpoint
from recsmith.train.optim import build_optimizer
from recsmith.train.schedule import build_schedulers

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
    def __init__(self, cfg, run: RunDir, model, loss_fn, stream, evaluate_valid: Callable, device, precision):
        """`evaluate_valid(model) -> (metrics, GateStats)` scores the validation split."""
        missing = set(loss_fn.required_logits) - set(model.tasks)
        if missing:
            raise TrainingError(f"the loss needs logits {sorted(missing)} that the model does not produce")
        self.cfg, self.run, self.model, self.loss_fn = cfg, run, model, loss_fn
        torch.set_flush_denormal(cfg.runtime.flush_denormal)  # process-wide; denormals are slow on CPUs
        self.stream, self.evaluate_valid, self.device, self.precision = stream, evaluate_valid, device, precision
        self.optimizer = build_optimizer(model, cfg)
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
                if on_step:
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
        if self.cfg.runtime.max_train_seconds and self.seconds >= self.cfg.runtime.max_train_seconds:
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
        """One update: forward, loss, backward, both optimizers, both schedules."""
        batch = batch.to(self.device)
        with self.precision.autocast():
            logits = self.model(*batch.inputs)
        # the loss in fp32: under autocast the logits come out in bf16/fp16, whose 8-bit (or
        # 11-bit) mantissa would round ESMM's log-space terms (logsigmoid sums, log1mexp)
        logits = {task: value.float() for task, value in logits.items()}
        loss, terms = self.loss_fn(logits, batch.labels)
        self.optimizer.zero_grad()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.optimizer.step(self.scaler)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return loss, terms

    def _log_train(self, mean_loss: torch.Tensor, terms: dict, steps: int, seconds: float) -> dict:
        value = float(mean_loss)
        if not math.isfinite(value):
            raise TrainingError(
                f"loss is {value} at step {self.step}: training diverged "
                f"(lower optim.dense.lr / optim.sparse.lr, or check the input data)"
            )
        record = {"type": "train", "step": self.step, "loss": value,
                  **{k: float(v.detach()) for k, v in terms.items()},
                  **{f"lr_{k}": v for k, v in self.optimizer.lrs().items()},
                  "samples_per_s": steps * self.cfg.data.batch_size / max(seconds, 1e-9)}
        RunDir.append(self.run.metrics, record)
        return record

    def evaluate_and_checkpoint(self) -> None:
        started = time.perf_counter()
        metrics, gates = self.evaluate_valid(self.model)
        RunDir.append(self.run.metrics, {"type": "valid", "step": self.step, **metrics})
        decision = self.best.decide(self.step, metrics[self.best.key])
        RunDir.append(self.run.metrics, decision)
        for record in gates.report(self.model.gate_experts):
            RunDir.append(self.run.health, {"step": self.step, **record})
        state = self.state_dict()
        if decision["improved"]:
            save_checkpoint(self.run.ckpt_best, state)
        save_checkpoint(self.run.ckpt_last, state)
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
            "rng": rng_state(),
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
        restore_rng_state(state["rng"])
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
