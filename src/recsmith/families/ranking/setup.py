"""The ranking family's training setup: model, loss, train stream and evaluations."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from recsmith.data.batches import SplitData, TrainStream, load_split
from recsmith.data.schema import DatasetSchema
from recsmith.models.ranking import build_model
from recsmith.run_dir import RunDir
from recsmith.tasks import TaskSpec, funnel_pair
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.evaluate import evaluate
from recsmith.train.losses import ESMMLoss, MultiTaskLoss
from recsmith.train.predictions import save_predictions


def ranking_loss(cfg, tasks: dict[str, TaskSpec]):
    """ESMM over the heads' funnel pair, or each head's own BCE (the dataset checked to fit)."""
    heads = cfg.model.enabled_heads
    if cfg.model.esmm.enabled:
        return ESMMLoss(funnel_pair(tasks, heads), cfg.model.esmm.lambda_cvr_aux)
    return MultiTaskLoss([tasks[head] for head in heads])


def load_training_data(cfg, dataset_dir: Path, schema: DatasetSchema,
                       with_valid: bool = True) -> tuple[SplitData, SplitData | None]:
    train = load_split(dataset_dir, schema, "train", with_columns=False)  # truth columns: evaluation only
    valid = load_split(dataset_dir, schema, "valid") if with_valid else None
    if cfg.data.train_subset == "clicked":  # the head's label exists only where it is observed
        observed_when = schema.task_specs[cfg.model.enabled_heads[0]].observed_when
        train = train.subset(train.labels[observed_when].numpy() > 0)
    return train, valid


class RankingSetup:
    """Model, loss, train stream and evaluations of one ranking (multi-task) run."""

    def __init__(self, cfg, dataset_dir: Path, device: torch.device):
        self.cfg, self.device = cfg, device
        self.schema = DatasetSchema.load(dataset_dir)
        self.train, self.valid = load_training_data(cfg, dataset_dir, self.schema)
        self.model = build_model(self.schema, cfg).to(device)
        self.loss_fn = ranking_loss(cfg, self.schema.task_specs)
        self.stream = TrainStream(self.train, cfg.data.batch_size, seed=cfg.runtime.seed,
                                  keep_negatives=cfg.data.neg_keep_prob_train, label=self.schema.tasks[0].label)

    def describe(self) -> str:
        return f"{len(self.train)} train rows, {len(self.valid)} valid rows"

    def evaluate_valid(self, model):
        return evaluate(model, self.loss_fn, self.valid, self.cfg.data.eval_batch_size, self.device,
                        self.cfg.runtime.best_selection.primary_key)

    def final_evaluation(self, run: RunDir, dataset_dir: Path) -> dict:
        """The best checkpoint on the test split."""
        best = load_checkpoint(run.ckpt_best)
        self.model.load_state_dict(best["model"])
        test = load_split(dataset_dir, self.schema, "test")
        keep = functools.partial(save_predictions, run.predictions, dataset=str(dataset_dir))
        test_metrics, gates = evaluate(self.model, self.loss_fn, test, self.cfg.data.eval_batch_size, self.device,
                                       self.cfg.runtime.best_selection.primary_key, keep)
        return {"best_step": best["step"], "test": test_metrics, "test_rows": len(test),
                "expert_health_test": gates.report(self.model.gate_experts)}
