"""The text_classifier family: a Hugging Face sequence-classification checkpoint fine-tuned
on a text dataset (data.source rotten_tomatoes or text_table), scored with accuracy,
macro-F1, per-class precision/recall/F1, ROC-AUC (two classes), log loss and calibration
error. Needs the `text` extra (transformers and the packaged MiniLM)."""

from __future__ import annotations

from pathlib import Path

from recsmith.errors import ConfigError
from recsmith.families.base import Family
from recsmith.families.text.config import TextModelConfig
from recsmith.plugins import FAMILIES

SELECTABLE = ["accuracy", "macro_f1", "auc", "logloss", "ece", "loss"]


class TextClassifierFamily(Family):
    name = "text_classifier"
    config = TextModelConfig

    def check(self, cfg) -> None:
        m = cfg.model
        if m.freeze == "all_but_classifier" and m.freeze_layers:
            raise ConfigError("model.freeze_layers: set with model.freeze: all_but_classifier, which freezes every "
                              "layer already; use one of them")

    def selectable_metrics(self, cfg) -> tuple[list[str], str]:
        return SELECTABLE, "text classifiers"

    def check_dataset(self, cfg, schema) -> None:
        if schema.meta.get("view") != "text":
            raise ConfigError(f"model.family: '{self.name}' needs a text dataset (data.source rotten_tomatoes or "
                              f"text_table); dataset '{schema.name}' is {schema.meta.get('view', 'tabular')}")

    def setup(self, cfg, dataset_dir: Path, device):
        from recsmith.train.text import TextSetup

        return TextSetup(cfg, dataset_dir, device)

    def key_hyperparameters(self, cfg) -> dict:
        m = cfg.model
        return {"model.checkpoint": m.checkpoint, "model.freeze": m.freeze, "model.freeze_layers": m.freeze_layers,
                "model.dropout": m.dropout}

    def heads(self, cfg) -> list[str]:
        return ["label"]


FAMILIES.register("text_classifier")(TextClassifierFamily())
