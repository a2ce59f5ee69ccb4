"""The interface of a model family, and its defaults.

A family is one registered object (`recsmith.plugins.FAMILIES.register(name)(family)`) that
owns everything that differs between kinds of models; training, evaluation, bundles, the
scorer, export and the service look it up by `model.family` and never name one:

  config              the pydantic model of the whole `model:` mapping (a ModelSection)
  validate            `model:` → that config (and the sections of its components)
  check               cross-field rules over the whole experiment (after validation)
  selectable_metrics  what `runtime.best_selection.primary_key` may name
  check_dataset       does a prepared dataset fit the experiment (before training)
  fitted / fit        fitted without the Trainer (LightGBM, counts) and how
  setup               model, loss, training stream and evaluations for the Trainer
  key_hyperparameters the columns it adds to experiment_tracker.csv
  heads               the task heads of a model (bundle.json's `tasks`)
  serving_files       the dataset files a bundle of it copies (its scorer's data_dir)
  load_scorer         how a bundle or run dir of it scores raw rows (servable families;
                      the scorer also gives `recsmith export` its graph and inputs)
  evaluate_checkpoint `recsmith evaluate RUN --split S` (where the family supports it)

`Setup` (what `setup` returns) has `model`, `loss_fn`, `stream`, `describe()`,
`evaluate_valid(model) -> (metrics, GateStats)` and `final_evaluation(run, dataset_dir)
-> dict` (best_step, test metrics, ... for eval.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsmith.config.schema import ModelSection
from recsmith.data.schema import SCHEMA_FILE, VOCAB_FILE
from recsmith.errors import ConfigError, DataError
from recsmith.features.pipeline import FEATURES_FILE


class Family:
    name: str = ""
    config: type[ModelSection] = ModelSection
    servable: bool = False  # bundles, export, predict, the service
    # the prepared dataset's files a bundle copies (what its scorer reads from data_dir)
    serving_files: tuple[str, ...] = (SCHEMA_FILE, FEATURES_FILE, VOCAB_FILE)
    warm_startable: bool = False  # `recsmith train --init-from`

    def validate(self, data: dict, provenance: dict) -> ModelSection:
        from recsmith.config.loader import validate_model

        return validate_model(self.config, data, provenance, prefix="model.")

    def check(self, cfg) -> None:
        """Cross-field rules; a ConfigError naming the keys."""

    def selectable_metrics(self, cfg) -> tuple[list[str], str]:
        """(metrics the best checkpoint may be selected by, what they belong to in words)."""
        return ["loss"], f"model.family {self.name}"

    def check_dataset(self, cfg, schema) -> None:
        """A ConfigError when the dataset lacks what the experiment needs."""

    def fitted(self, cfg) -> bool:
        return False

    def fit(self, cfg, run, dataset_dir: Path) -> dict:
        raise NotImplementedError(f"model family {self.name} is trained by the Trainer")

    def setup(self, cfg, dataset_dir: Path, device) -> Any:
        raise NotImplementedError(f"model family {self.name} has no training setup")

    def key_hyperparameters(self, cfg) -> dict:
        return {}

    def heads(self, cfg) -> list[str]:
        """The task heads a model of this config has (bundle.json's `tasks`)."""
        return []

    def load_scorer(self, cfg, meta: dict, data_dir: Path, weights: Path) -> Any:
        """The recsmith.serve.scorer.Scorer of a bundle or run dir: its config, bundle.json-like
        `meta`, the dir holding schema.json / features.json / vocab.json, the weights file."""
        raise DataError(f"model family '{self.name}' cannot be bundled for serving")

    def export_source(self, run, staging: Path) -> Any:
        """What `recsmith export` traces (`export_graph()`, `export_inputs(dataset_dir, rows)`,
        `predict_encoded(*inputs)`, `outputs`), once the export's other files are in `staging`:
        by default the served bundle's scorer."""
        from recsmith.serve.bundle import write_bundle
        from recsmith.serve.scorer import Scorer

        write_bundle(run.path, staging)
        return Scorer.load(staging)

    def evaluate_checkpoint(self, cfg, state: dict, dataset_dir: Path, split: str) -> dict:
        """`recsmith evaluate`: a checkpoint's metrics on a split."""
        raise ConfigError(f"recsmith evaluate does not cover model family '{self.name}'; its valid and test "
                          "metrics are in the run's eval.json")
