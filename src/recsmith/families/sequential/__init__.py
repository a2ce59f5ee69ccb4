"""The next-item family: a model of the user's time-ordered history (MovieLens' sequence
view) ranks items: softmax encoders (SASRec, GRU4Rec, NARM, AvgPool), DIN on candidate rows,
and fitted ones (most-popular, LightGBM, the DIN + LightGBM hybrid); evaluated with top-K
metrics (full or sampled ranking) and CTR-style AUC / GAUC / LogLoss, both labelled."""

from __future__ import annotations

from pathlib import Path

from recsmith.config.loader import validate_model
from recsmith.errors import ConfigError, did_you_mean
from recsmith.families.base import Family
from recsmith.metrics.ranking import sequential_metric_names
from recsmith.models.sequential.architectures import ARCHITECTURES, section_configs
from recsmith.models.sequential.config import SequentialConfig, SequentialModelConfig
from recsmith.plugins import FAMILIES


class SequentialFamily(Family):
    name = "sequential"
    config = SequentialModelConfig

    def validate(self, data: dict, provenance: dict) -> SequentialModelConfig:
        """`model:`, each architecture's section validated by its config; the chosen
        architecture's section defaults when not given."""
        model = validate_model(SequentialModelConfig, data, provenance, prefix="model.")
        sections, owners = model.sequential.__pydantic_extra__, section_configs()
        for key in list(sections):
            if key not in owners:
                choices = [*SequentialConfig.model_fields, *owners]
                raise ConfigError(f"model.sequential.{key}: unknown key{did_you_mean(key, choices)}")
            sections[key] = validate_model(owners[key], sections[key], provenance, prefix=f"model.sequential.{key}.")
        arch = ARCHITECTURES.get(model.sequential.architecture)
        if arch.section and arch.section not in sections:
            sections[arch.section] = arch.config()
        return model

    def selectable_metrics(self, cfg) -> tuple[list[str], str]:
        return sequential_metric_names(cfg.topk.cutoffs) + ["loss"], "sequential models"

    def check_dataset(self, cfg, schema) -> None:
        if schema.meta.get("view") != "sequence":
            raise ConfigError(f"model.family: '{self.name}' needs a sequence dataset (data.options.view: sequence); "
                              f"dataset '{schema.name}' is {schema.meta.get('view', 'tabular')}")

    def fitted(self, cfg) -> bool:
        return ARCHITECTURES.get(cfg.model.sequential.architecture).fitted

    def fit(self, cfg, run, dataset_dir: Path) -> dict:
        from recsmith.train.fitted import fit_run

        return fit_run(cfg, run, dataset_dir)

    def setup(self, cfg, dataset_dir: Path, device):
        from recsmith.train.sequential import SequentialSetup

        return SequentialSetup(cfg, dataset_dir, device)

    def export_source(self, run, staging: Path):
        """The network and the test split's histories (families/sequential/export.py); the
        export dir holds the graph, the run's config and eval.json."""
        import shutil

        from recsmith.families.sequential.export import SequenceExport
        from recsmith.serve.bundle import run_dataset_dir

        source = SequenceExport(run, run_dataset_dir(run))
        shutil.copyfile(run.config, staging / "config.yaml")
        shutil.copyfile(run.eval, staging / "eval.json")
        return source

    def key_hyperparameters(self, cfg) -> dict:
        seq = cfg.model.sequential
        return {"model.sequential.architecture": seq.architecture, "model.sequential.max_length": seq.max_length}


FAMILIES.register("sequential")(SequentialFamily())
