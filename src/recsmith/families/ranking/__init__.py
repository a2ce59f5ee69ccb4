"""The ranking family: embeddings → backbone (DeepFM) → structure (single, shared-bottom,
MMoE, PLE, or any registered one) → towers → one head per task, scored on tabular rows.
ESMM trains the heads' funnel pair over every impression."""

from __future__ import annotations

from pathlib import Path

from recsmith.config.loader import validate_model
from recsmith.errors import ConfigError, did_you_mean
from recsmith.families.base import Family
from recsmith.families.ranking.config import RankingModelConfig
from recsmith.metrics.funnel import ENTIRE_TRUTH, selectable_metrics
from recsmith.models.structures import STRUCTURES
from recsmith.plugins import FAMILIES
from recsmith.tasks import funnel_pair


class RankingFamily(Family):
    name = "ranking"
    config = RankingModelConfig
    servable = True
    warm_startable = True

    def validate(self, data: dict, provenance: dict) -> RankingModelConfig:
        """`model:` with each structure's section validated by that structure's config."""
        model = validate_model(RankingModelConfig, data, provenance, prefix="model.")
        sections = model.__pydantic_extra__
        for key in list(sections):
            owner = STRUCTURES.lookup(key)
            if owner is None or owner.config is None:
                choices = [*RankingModelConfig.model_fields, *(n for n in STRUCTURES.names()
                                                                  if STRUCTURES.lookup(n).config is not None)]
                raise ConfigError(f"model.{key}: unknown key{did_you_mean(key, choices)} "
                                  f"(a section is named after a structure with settings)")
            sections[key] = validate_model(owner.config, sections[key], provenance, prefix=f"model.{key}.")
        return model

    def check(self, cfg) -> None:
        model = cfg.model
        heads = model.enabled_heads
        structure = STRUCTURES.get(model.mtl, "model.mtl")
        low, high = structure.min_heads, structure.max_heads
        if len(heads) < low or (high is not None and len(heads) > high):
            wanted = f"{low} head{'s' if low > 1 else ''}" if low == high else f"at least {low} heads"
            raise ConfigError(f"model.mtl '{model.mtl}' takes {wanted}, got model.enabled_heads {heads}")
        if hasattr(structure, "check"):
            try:
                structure.check(model.section(model.mtl), heads)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if model.esmm.enabled:
            if len(heads) != 2:
                raise ConfigError(f"model.esmm.enabled: ESMM trains a funnel pair of two heads (click → "
                                  f"conversion), got model.enabled_heads {heads}")
            if cfg.data.neg_keep_prob_train != 1.0:
                raise ConfigError("data.neg_keep_prob_train: ESMM is trained on the entire impression space; "
                                  "negative down-sampling must be off (1.0)")
        if cfg.data.train_subset == "clicked" and len(heads) != 1:
            raise ConfigError("data.train_subset 'clicked' trains one head on the rows where its label is observed "
                              "(a CVR-only model on clicks); model.enabled_heads must name one head")

    def selectable_metrics(self, cfg, tasks=None) -> tuple[list[str], str]:
        heads = cfg.model.enabled_heads
        return selectable_metrics(heads, cfg.data.source == "synthetic", tasks), f"heads {heads}"

    def check_dataset(self, cfg, schema) -> None:
        if schema.meta.get("view") == "sequence":
            raise ConfigError(f"model.family: '{self.name}' trains on tabular rows; dataset '{schema.name}' is a "
                              "sequence view (data.options.view: sequence) for the next-item family")
        tasks = schema.task_specs
        heads = cfg.model.enabled_heads
        for head in heads:
            if head not in tasks:
                raise ConfigError(f"model.enabled_heads: dataset '{schema.name}' has no task '{head}' "
                                  f"(its tasks: {', '.join(tasks)}){did_you_mean(head, tasks)}")
        if cfg.model.esmm.enabled and funnel_pair(tasks, heads) is None:
            raise ConfigError(f"model.esmm.enabled: in dataset '{schema.name}' the heads {heads} do not form a "
                              "funnel pair (one observed only where the other's label is 1)")
        if cfg.data.train_subset == "clicked" and not tasks[heads[0]].observed_when:
            raise ConfigError(f"data.train_subset: task '{heads[0]}' of dataset '{schema.name}' is observed on "
                              "every row; use 'all'")
        key = cfg.runtime.best_selection.primary_key
        if key.endswith("_entire") and ENTIRE_TRUTH not in schema.truth:
            raise ConfigError(f"runtime.best_selection.primary_key: {key} needs the synthetic funnel's truth "
                              f"columns, which dataset '{schema.name}' does not have")
        cfg.check_primary_key(*self.selectable_metrics(cfg, tasks))

    def setup(self, cfg, dataset_dir: Path, device):
        from recsmith.families.ranking.setup import RankingSetup

        return RankingSetup(cfg, dataset_dir, device)

    def heads(self, cfg) -> list[str]:
        return list(cfg.model.enabled_heads)

    def load_scorer(self, cfg, meta: dict, data_dir: Path, weights: Path):
        from recsmith.families.ranking.scoring import RankingScorer

        return RankingScorer.build(cfg, meta, data_dir, weights)

    def key_hyperparameters(self, cfg) -> dict:
        return {"model.mtl": cfg.model.mtl, "model.enabled_heads": "+".join(cfg.model.enabled_heads),
                "model.esmm.enabled": cfg.model.esmm.enabled}

    def evaluate_checkpoint(self, cfg, state: dict, dataset_dir: Path, split: str) -> dict:
        from recsmith.families.ranking.setup import ranking_loss
        from recsmith.data.batches import load_split
        from recsmith.data.schema import DatasetSchema
        from recsmith.models.ranking import build_model
        from recsmith.train.evaluate import evaluate
        from recsmith.train.run import resolve_device

        schema = DatasetSchema.load(dataset_dir)
        model = build_model(schema, cfg)
        model.load_state_dict(state["model"])
        device = resolve_device(cfg.runtime.device)
        data = load_split(dataset_dir, schema, split)
        metrics, _ = evaluate(model.to(device), ranking_loss(cfg, schema.task_specs), data, cfg.data.eval_batch_size,
                              device, cfg.runtime.best_selection.primary_key)
        return metrics


FAMILIES.register("ranking")(RankingFamily())
