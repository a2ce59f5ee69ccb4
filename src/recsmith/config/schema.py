"""Typed experiment config: the sections every run has. Key names follow the seed documents
(`data.batch_size`, `model.mtl`, `model.esmm.lambda_cvr_aux`, ...). Every model forbids
unknown keys and is strict about types, so a typo or a wrong type fails on load with its
dotted path. `model:` belongs to the run's family (recsmith.plugins), which validates it
with its own config model; a structure's or architecture's section (`model.mmoe`, ...)
belongs to that component."""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from recsmith.plugins import DEFAULT_FAMILY

TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def registered(field: str, module: str, registry: str):
    """A validator accepting only names registered in `module.registry` (imported lazily,
    so loading a config does not build models)."""

    def check(cls, value: str) -> str:
        getattr(importlib.import_module(module), registry).check(value)
        return value

    return field_validator(field)(classmethod(check))


# ----------------------------------------------------------------------------- data
class SyntheticFunnelConfig(Strict):
    """Knobs of the built-in synthetic ad funnel (see recsmith.data.synthetic)."""

    rows: int = Field(400_000, ge=1_000, le=500_000_000)
    click_rate: float = Field(0.05, gt=0.0, lt=1.0)
    conversion_rate: float = Field(0.10, gt=0.0, lt=1.0, description="post-click rate")
    selection_bias: float = Field(
        1.0, ge=-5.0, le=5.0, description="how much click-driving features shift conversion"
    )
    task_correlation: float = Field(0.5, ge=-1.0, le=1.0)
    ctr_signal: float = Field(1.2, gt=0.0, le=5.0, description="std of the true CTR logit")
    cvr_signal: float = Field(1.0, gt=0.0, le=5.0, description="std of the true CVR logit")
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    zipf_shift: float = Field(
        0.0, ge=-1.0, le=2.0,
        description="added to the Zipf exponents that draw users, items and context fields per impression: "
                    "a covariate shift (popularity only; the world and the true probabilities stay the same)",
    )


class DataConfig(Strict):
    source: str = "synthetic"
    path: Optional[str] = None
    synthetic: SyntheticFunnelConfig = Field(default_factory=SyntheticFunnelConfig)
    batch_size: int = Field(1024, ge=1, le=1_048_576)
    eval_batch_size: int = Field(16384, ge=1, le=4_194_304)
    seed: int = 20260127
    neg_keep_prob_train: float = Field(1.0, gt=0.0, le=1.0)
    train_subset: Literal["all", "clicked"] = "all"
    options: dict[str, Any] = {}  # source-specific, validated by the source
    max_bad_rows: float = Field(0.001, ge=0.0, le=1.0)  # share of malformed raw rows tolerated
    # a model update: a prepared dataset dir whose fitted encoders this preparation extends
    # (known values keep their ids, new ones are appended); set by runtime.init_from
    extend_vocab_from: Optional[str] = None

    _check_source = registered("source", "recsmith.data.sources", "SOURCES")

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.source in ("dir", "table") and not self.path:
            raise ValueError(f"data.path: required when data.source is '{self.source}'")
        return self


# ---------------------------------------------------------------------------- model
class EmbeddingConfig(Strict):
    default_embedding_dim: int = Field(8, ge=1, le=1024)
    sparse_grad: bool = True
    # how a run under torchrun cuts the tables over its ranks (TorchRec, recsmith.train.sharding):
    # none replicates them (DDP); auto lets TorchRec's planner choose; one process never shards
    sharding: Literal["none", "table_wise", "column_wise", "row_wise", "auto"] = "none"


class ModelSection(BaseModel):
    """`model:` as read first: its family, and the family's keys unchecked. The family's
    own config model (recsmith.plugins.FAMILIES[family].config, a subclass) then validates
    the whole mapping, so this schema names no family, structure or architecture."""

    model_config = ConfigDict(extra="allow", strict=True, validate_default=True)
    family: str = DEFAULT_FAMILY

    @field_validator("family")
    @classmethod
    def _registered_family(cls, value: str) -> str:
        from recsmith.plugins import check_family

        return check_family(value)


# ------------------------------------------------------------------------ training
class AdamHyperparams(Strict):
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    betas: list[float] = [0.9, 0.999]
    eps: float = Field(1e-8, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"betas must be two numbers in [0, 1), got {value}")
        return value


class DenseOptimConfig(AdamHyperparams):
    type: Literal["adam", "adamw"] = "adam"
    lr: float = Field(6e-4, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    fused: bool = True  # torch's fused Adam kernel: the same update, a few % faster here


class SparseOptimConfig(AdamHyperparams):
    type: Literal["lazy_adam", "sparse_adam"] = "lazy_adam"  # the same update; lazy_adam is faster
    lr: float = Field(1e-3, gt=0.0, le=10.0)


class OptimConfig(Strict):
    type: Literal["dual_sparse_dense"] = "dual_sparse_dense"
    dense: DenseOptimConfig = Field(default_factory=DenseOptimConfig)
    sparse: SparseOptimConfig = Field(default_factory=SparseOptimConfig)
    # one optimizer step over data.batch_size rows in this many micro-batches (a global batch
    # larger than a device holds); the step's update is the same as one batch's
    grad_accumulation_steps: int = Field(1, ge=1, le=4096)
    clip_grad_norm: Optional[float] = Field(None, gt=0.0)  # the joint L2 norm of all gradients, at most this


class LRSchedulerConfig(Strict):
    """Linear warm-up over `warmup_steps`, then: `constant`; `cosine` or `linear` decay to
    `min_lr_ratio` at `total_steps`; or `plateau`: constant, times `plateau_factor` each time
    the validation metric has not improved for `plateau_patience` evaluations in a row
    (ReduceLROnPlateau's rule, never below `min_lr_ratio`)."""

    type: Literal["cosine", "constant", "linear", "plateau"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    total_steps: Optional[int] = Field(None, ge=1)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=1)


class BestSelectionConfig(Strict):
    """The validation metric the best checkpoint is kept by. Left out: the family's first
    selectable metric (the first head's AUC for the ranking family); the mode follows it."""

    primary_key: Optional[str] = None
    mode: Optional[Literal["max", "min"]] = None


class TopKConfig(Strict):
    """How next-item predictions are ranked for HR/NDCG/MRR/Precision@K (sequential family)."""

    protocol: Literal["full", "sampled"] = "full"  # rank the target among all items, or among sampled ones
    sampled_negatives: int = Field(100, ge=1, le=100_000)  # protocol sampled: never-rated items, seeded
    exclude_history: bool = False  # drop items the user already has in the history from the ranking
    cutoffs: list[int] = [5, 10, 20]

    @field_validator("cutoffs")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"cutoffs must be distinct positive integers, got {value}")
        return sorted(value)


class RuntimeConfig(Strict):
    seed: int = 20260127
    max_train_steps: int = Field(2000, ge=1)
    max_train_epochs: Optional[float] = Field(None, gt=0.0)  # passes over the training data: same on every machine
    max_train_seconds: Optional[float] = Field(None, gt=0.0)  # a wall-clock budget (training + validation): machine-dependent
    early_stopping_patience: Optional[int] = Field(None, ge=1)  # evaluations without improvement before stopping
    # training precision (scores are always fp32): auto = a reduced one only where measured faster
    # on this hardware class; true = bf16 on CPU, fp16 on CUDA; bf16 / fp16 force it; false = fp32
    amp: Union[bool, Literal["auto", "bf16", "fp16"]] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every_steps: int = Field(500, ge=1)
    log_every_steps: int = Field(50, ge=1)
    num_threads: Optional[int] = Field(None, ge=1, le=512)
    flush_denormal: bool = True  # treat float32 values below 1.2e-38 as 0: faster on CPUs, same results
    init_from: Optional[str] = None  # a finished ranking run dir to warm-start from (recsmith.train.warm_start)
    best_selection: BestSelectionConfig = Field(default_factory=BestSelectionConfig)

    def budget(self) -> str:
        """The training budget in words (whichever limit comes first ends training); a
        wall-clock limit is labelled machine-dependent, since a faster machine trains more steps."""
        parts = [f"{self.max_train_steps} steps"]
        if self.max_train_epochs:
            parts.append(f"{self.max_train_epochs:g} epochs")
        if self.max_train_seconds:
            parts.append(f"{self.max_train_seconds:g} s wall clock (machine-dependent)")
        return ", ".join(parts)


class TrackingConfig(Strict):
    """Where a finished run is recorded besides its run dir (experiment_tracker.csv always)."""

    mlflow: bool = False  # log params, metrics, artifacts and the model to MLflow
    mlflow_tracking_uri: Optional[str] = None  # None: a local file store, runs/mlruns
    mlflow_experiment: Optional[str] = None  # None: the chain's name (chain runs), else `name`


# ---------------------------------------------------------------------- experiment
class ExperimentConfig(Strict):
    """One training run. Loaded by recsmith.config.loader (which resolves `extends:`, imports
    `plugins`, and has the model's family validate `model:` and the cross-field rules)."""

    name: str = "experiment"
    description: str = ""
    plugins: list[str] = []  # Python files (relative to the config that lists them) or modules to import first
    data: DataConfig = Field(default_factory=DataConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    model: SerializeAsAny[ModelSection] = Field(default_factory=ModelSection)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lr_scheduler: LRSchedulerConfig = Field(default_factory=LRSchedulerConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    topk: TopKConfig = Field(default_factory=TopKConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self):
        self._check_schedule()
        return self

    def _check_schedule(self) -> None:
        sched, steps = self.lr_scheduler, self.runtime.max_train_steps
        if sched.total_steps is None:
            sched.total_steps = steps
        if sched.total_steps < steps:
            raise ValueError(
                f"lr_scheduler.total_steps ({sched.total_steps}) is shorter than "
                f"runtime.max_train_steps ({steps})"
            )
        if sched.warmup_steps >= sched.total_steps:
            raise ValueError(
                f"lr_scheduler.warmup_steps ({sched.warmup_steps}) must be below "
                f"lr_scheduler.total_steps ({sched.total_steps})"
            )

    def check_primary_key(self, allowed: list[str], what: str) -> None:
        """best_selection names one of `allowed` (the family's selectable metrics) in its direction."""
        from recsmith.errors import ConfigError, did_you_mean
        from recsmith.metrics.direction import lower_is_better

        selection = self.runtime.best_selection
        if selection.primary_key is None:
            selection.primary_key = allowed[0]
        if selection.mode is None:
            selection.mode = "min" if lower_is_better(selection.primary_key) else "max"
        key, mode = selection.primary_key, selection.mode
        if key not in allowed:
            raise ConfigError(
                f"runtime.best_selection.primary_key: '{key}' is not a metric of this experiment "
                f"({what}; choose from {', '.join(allowed)})"
                f"{did_you_mean(key, allowed)}"
            )
        expected = "min" if lower_is_better(key) else "max"
        if mode != expected:
            raise ConfigError(
                f"runtime.best_selection.mode: '{key}' is {'lower' if expected == 'min' else 'higher'}"
                f" is better, so the mode must be '{expected}', not '{mode}'"
            )
