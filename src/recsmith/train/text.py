"""The text_classifier family's training setup: the same Trainer, run dir and checkpoints as
the other families; tokenized texts in, class logits out, classification metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recsmith.atomic import write_text_atomic
from recsmith.data.schema import DatasetSchema
from recsmith.metrics.classification import (
    classification_metrics,
    classification_report_text,
    confusion_matrix,
    plot_confusion_matrix,
)
from recsmith.models.text.classifier import TASK, TextClassifier, load_tokenizer
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.diagnostics import GateStats
from recsmith.train.predictions import save_text_predictions
from recsmith.train.text_data import TextStream, TokenizedSplit

REPORT_FILE, CONFUSION_FILE = "classification_report.txt", "confusion_matrix.png"


class ClassificationLoss:
    """Cross-entropy over the classes, the mean over the batch (or over `counts` rows: the
    whole step's, under DDP or accumulation)."""

    required_logits = [TASK]

    def counts(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"loss_{TASK}": torch.tensor(float(len(labels[TASK])), device=labels[TASK].device)}

    def __call__(self, logits: dict, labels: dict, counts: dict | None = None):
        if counts is None:
            term = F.cross_entropy(logits[TASK], labels[TASK])
        else:
            term = F.cross_entropy(logits[TASK], labels[TASK], reduction="sum") / counts[f"loss_{TASK}"]
        return term, {f"loss_{TASK}": term}


@torch.no_grad()
def predict_probabilities(model, split: TokenizedSplit, batch_size: int, device) -> np.ndarray:
    """[N, C] class probabilities in fp32, in the split's row order."""
    was_training = model.training
    model.eval()
    out = None
    for rows, batch in split.scoring_batches(batch_size):
        batch = batch.to(device)
        probs = torch.softmax(model(*batch.inputs)[TASK].float(), dim=1).cpu().numpy()
        if out is None:
            out = np.empty((len(split), probs.shape[1]), np.float32)
        out[rows.numpy()] = probs
    model.train(was_training)
    return out


def write_test_artefacts(run, name: str, labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                         dataset_dir) -> None:
    """classification_report.txt, confusion_matrix.png and the test predictions of a text run."""
    write_text_atomic(run.path / REPORT_FILE, classification_report_text(labels, probabilities, classes))
    matrix = confusion_matrix(labels, probabilities.argmax(1), len(classes))
    plot_confusion_matrix(matrix, classes, run.path / CONFUSION_FILE, f"{name} (test)")
    save_text_predictions(run.path, probabilities, labels, str(dataset_dir))


class TextSetup:
    """Model, loss, train stream and evaluations of one text-classification run."""

    def __init__(self, cfg, dataset_dir, device: torch.device):
        self.cfg, self.device = cfg, device
        schema = DatasetSchema.load(dataset_dir)
        self.classes = list(schema.meta["classes"])
        m = cfg.model
        self.tokenizer = load_tokenizer(m.checkpoint)
        self.train = TokenizedSplit.load(dataset_dir, "train", self.tokenizer, m.max_length)
        self.valid = TokenizedSplit.load(dataset_dir, "valid", self.tokenizer, m.max_length)
        self.dataset_dir = dataset_dir
        torch.manual_seed(cfg.runtime.seed)  # the new head's weights, then dropout: a seed repeats a run
        self.model = TextClassifier(m.checkpoint, len(self.classes), m.dropout)
        self.model.freeze(m.freeze, m.freeze_layers)
        self.model.to(device)
        self.loss_fn = ClassificationLoss()
        self.stream = TextStream(self.train, cfg.data.batch_size, seed=cfg.runtime.seed)
        self.key = cfg.runtime.best_selection.primary_key

    def describe(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        return (f"{len(self.train)} train texts, {len(self.valid)} valid texts, {len(self.classes)} classes, "
                f"{self.model.trainable_parameters():,} of {total:,} parameters trainable")

    def _metrics(self, model, split: TokenizedSplit) -> tuple[dict, np.ndarray]:
        probs = predict_probabilities(model, split, self.cfg.data.eval_batch_size, self.device)
        metrics = classification_metrics(split.labels, probs, self.classes)
        metrics["loss"] = metrics["logloss"]
        metrics["auc_primary"] = metrics[self.key]  # the selection metric, under the summary's column name
        return metrics, probs

    def evaluate_valid(self, model) -> tuple[dict, GateStats]:
        return self._metrics(model, self.valid)[0], GateStats()

    def final_evaluation(self, run, dataset_dir) -> dict:
        """The best checkpoint on the test split; the report and confusion matrix beside it."""
        best = load_checkpoint(run.ckpt_best)
        self.model.load_state_dict(best["model"])
        test = TokenizedSplit.load(dataset_dir, "test", self.tokenizer, self.cfg.model.max_length)
        metrics, probs = self._metrics(self.model, test)
        write_test_artefacts(run, self.cfg.name, test.labels, probs, self.classes, dataset_dir)
        return {"test": metrics, "best_step": best["step"], "test_rows": len(test),
                "classes": self.classes, "trainable_parameters": self.model.trainable_parameters()}
