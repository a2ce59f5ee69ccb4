"""The text_classifier family: a Hugging Face sequence-classification checkpoint fine-tuned
on a text dataset (data.source rotten_tomatoes or text_table), or the TF-IDF + logistic-
regression floor (model.architecture tfidf_logreg, fitted without the Trainer), scored with
accuracy, macro-F1, per-class precision/recall/F1, ROC-AUC (two classes), log loss and
calibration error. Needs the `text` extra (transformers and the packaged MiniLM; scikit-learn
for the floor)."""

from __future__ import annotations

from pathlib import Path

from recsmith.data.schema import SCHEMA_FILE
from recsmith.errors import ConfigError
from recsmith.families.base import Family
from recsmith.families.text.config import TextModelConfig
from recsmith.plugins import FAMILIES

SELECTABLE = ["accuracy", "macro_f1", "auc", "logloss", "ece", "loss"]
FITTED = {"transformer": False, "tfidf_logreg": True}  # model.architecture -> fitted without the Trainer
TRANSFORMER_ONLY = {"freeze": "none", "freeze_layers": 0, "dropout": None}  # key -> its unset value


class TextClassifierFamily(Family):
    name = "text_classifier"
    config = TextModelConfig
    servable = True  # recsmith predict and the service score raw texts (fine-tuned runs)
    serving_files = (SCHEMA_FILE,)  # the classes; tokenizer and architecture come from model.checkpoint

    def check(self, cfg) -> None:
        m = cfg.model
        if FITTED[m.architecture]:
            for key, unset in TRANSFORMER_ONLY.items():
                if getattr(m, key) != unset:
                    raise ConfigError(f"model.{key}: set with model.architecture: {m.architecture}, which has no "
                                      "transformer to apply it to; remove it")
        if m.freeze == "all_but_classifier" and m.freeze_layers:
            raise ConfigError("model.freeze_layers: set with model.freeze: all_but_classifier, which freezes every "
                              "layer already; use one of them")

    def selectable_metrics(self, cfg) -> tuple[list[str], str]:
        return SELECTABLE, "text classifiers"

    def check_dataset(self, cfg, schema) -> None:
        if schema.meta.get("view") != "text":
            raise ConfigError(f"model.family: '{self.name}' needs a text dataset (data.source rotten_tomatoes or "
                              f"text_table); dataset '{schema.name}' is {schema.meta.get('view', 'tabular')}")

    def fitted(self, cfg) -> bool:
        return FITTED[cfg.model.architecture]

    def fit(self, cfg, run, dataset_dir: Path) -> dict:
        from recsmith.train.text_floor import fit_tfidf

        return fit_tfidf(cfg, run, dataset_dir)

    def load_scorer(self, cfg, meta: dict, data_dir: Path, weights: Path):
        from recsmith.families.text.scoring import TextScorer

        return TextScorer(cfg, meta, data_dir, weights)

    def setup(self, cfg, dataset_dir: Path, device):
        from recsmith.train.text import TextSetup

        return TextSetup(cfg, dataset_dir, device)

    def key_hyperparameters(self, cfg) -> dict:
        m = cfg.model
        if FITTED[m.architecture]:
            return {"model.architecture": m.architecture,
                    **{f"model.tfidf.{k}": v for k, v in m.tfidf.model_dump().items()}}
        return {"model.architecture": m.architecture, "model.checkpoint": m.checkpoint, "model.freeze": m.freeze,
                "model.freeze_layers": m.freeze_layers, "model.dropout": m.dropout}

    def heads(self, cfg) -> list[str]:
        return ["label"]


FAMILIES.register("text_classifier")(TextClassifierFamily())
