"""Typed experiment config. Key names follow the seed documents (`data.batch_size`,
`model.mtl`, `esmm.lambda_cvr_aux`, ...). Every model forbids unknown keys and is strict
about types, so a typo or a wrong type fails on load with its dotted path."""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class MMoEConfig(Strict):
    num_experts: int = Field(4, ge=1, le=64)
    gate_type: str = "linear"
    expert_hidden_dims: list[int] = [128, 64]

    _check_gate_type = registered("gate_type", "recsmith.models.layers.gates", "GATES")


class ExpertSpec(Strict):
    """One expert of a heterogeneous PLE: an MLP or a CrossNet-v2."""

    type: str
    hidden_dims: Optional[list[int]] = None
    num_layers: Optional[int] = Field(None, ge=1, le=16)

    _check_type = registered("type", "recsmith.models.layers.experts", "EXPERTS")

    @model_validator(mode="after")
    def _fields_for_type(self):
        if self.type == "mlp" and not self.hidden_dims:
            raise ValueError("an 'mlp' expert needs hidden_dims")
        if self.type == "crossnet_v2" and self.num_layers is None:
            raise ValueError("a 'crossnet_v2' expert needs num_layers")
        return self


class HeteroExperts(Strict):
    shared: list[ExpertSpec]
    specific: dict[str, list[ExpertSpec]]


class AlignerConfig(Strict):
    """Expert output aligner: LayerNorm + learnable per-expert scale (init 1) + dropout."""

    enabled: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class PLEConfig(Strict):
    num_levels: int = Field(1, ge=1, le=8)
    shared_num_experts: int = Field(4, ge=1, le=64)
    specific_num_experts: dict[str, int] = {"ctr": 1, "cvr": 1}
    expert_hidden_dims: list[int] = [128, 64]
    gate_type: str = "linear"
    hetero_enabled: bool = False
    experts: Optional[HeteroExperts] = None
    expert_dim: int = Field(64, ge=1, le=4096, description="common output width of hetero experts")
    expert_output_align: AlignerConfig = Field(default_factory=AlignerConfig)

    _check_gate_type = registered("gate_type", "recsmith.models.layers.gates", "GATES")

    @model_validator(mode="after")
    def _hetero_consistent(self):
        if not self.hetero_enabled:
            return self
        if self.experts is None:
            raise ValueError("model.ple.experts: required when model.ple.hetero_enabled is true")
        if len(self.experts.shared) != self.shared_num_experts:
            raise ValueError(
                f"model.ple.shared_num_experts is {self.shared_num_experts} but "
                f"model.ple.experts.shared lists {len(self.experts.shared)} experts"
            )
        for task, count in self.specific_num_experts.items():
            listed = len(self.experts.specific.get(task, []))
            if listed != count:
                raise ValueError(
                    f"model.ple.specific_num_experts.{task} is {count} but "
                    f"model.ple.experts.specific.{task} lists {listed} experts"
                )
        return self


class DINConfig(Strict):
    """DIN's attention and MLP; the three ablation switches are off by default."""

    attention_hidden_dims: list[int] = [64, 32]
    mlp_hidden_dims: list[int] = [128, 64]
    time_decay: bool = False  # attention × exp(-λ·age in days), λ learned
    multi_head: bool = False  # num_heads attention heads over embedding chunks
    num_heads: int = Field(4, ge=1, le=64)
    enhanced_mlp: bool = False  # residual blocks + LayerNorm instead of the plain MLP
    interest_dim: int = Field(64, ge=1, le=4096)  # the user-interest vector the hybrid reads


class LightGBMConfig(Strict):
    """LightGBM on the explicit features (architecture lightgbm / hybrid)."""

    num_leaves: int = Field(31, ge=2, le=65536)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_boost_round: int = Field(500, ge=1, le=100_000)
    early_stopping_rounds: int = Field(30, ge=1)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0.0, le=1.0)


FITTED_ARCHITECTURES = ("most_popular", "lightgbm", "hybrid")  # fitted directly, not by the Trainer


class SequentialConfig(Strict):
    """A next-item model over the user's time-ordered history (`model.family: sequential`).

    Neural: sasrec, gru4rec, narm, avgpool (softmax over all items), din (BCE on candidate
    rows). Fitted: most_popular (items by their count before the target time), lightgbm
    (explicit features), hybrid (explicit features + a trained DIN's interest vector and
    score, read from `hybrid_din_run`)."""

    architecture: str = "sasrec"
    hybrid_din_run: Optional[str] = None  # architecture hybrid: a trained DIN's run dir; relative = beside this run's dir
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig)
    max_length: int = Field(50, ge=2, le=1000)  # most recent history items a prediction sees
    hidden_dim: int = Field(64, ge=1, le=4096)
    num_layers: int = Field(2, ge=1, le=16)
    num_heads: int = Field(2, ge=1, le=64)
    inner_dim: int = Field(256, ge=1, le=16384)  # SASRec's point-wise feed-forward width
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    objective: Optional[Literal["softmax", "bce"]] = None  # None: the paper's (bce for din, else softmax)
    din: DINConfig = Field(default_factory=DINConfig)

    @model_validator(mode="after")
    def _known_architecture(self):
        from recsmith.models.sequential import ENCODERS

        if self.architecture not in ("din", *FITTED_ARCHITECTURES) and self.architecture not in ENCODERS:
            raise ValueError(ENCODERS.unknown(self.architecture).replace(
                "(choose from ", f"(choose from din, {', '.join(FITTED_ARCHITECTURES)}, "))
        if self.architecture == "hybrid" and not self.hybrid_din_run:
            raise ValueError("hybrid_din_run: required for architecture hybrid (the run dir of a trained DIN)")
        paper = "bce" if self.architecture in ("din", "lightgbm", "hybrid") else "softmax"
        if self.objective is None:
            self.objective = paper
        elif self.objective != paper:
            raise ValueError(f"objective '{self.objective}': {self.architecture} is trained with '{paper}' here "
                             "(softmax = cross-entropy over all items; bce = DIN's candidate click loss)")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(Strict):
    family: Literal["ranking", "sequential"] = "ranking"
    sequential: SequentialConfig = Field(default_factory=SequentialConfig)
    backbone: str = "deepfm"
    deep_hidden_dims: list[int] = [256, 128]
    fm_projection_dim: int = Field(16, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mtl: str = "sharedbottom"
    enabled_heads: list[str] = ["ctr", "cvr"]
    tasks: list[str] = ["ctr", "cvr"]
    tower_hidden_dims: list[int] = [64]
    mmoe: MMoEConfig = Field(default_factory=MMoEConfig)
    ple: PLEConfig = Field(default_factory=PLEConfig)

    _check_backbone = registered("backbone", "recsmith.models.backbones", "BACKBONES")

    _check_mtl = registered("mtl", "recsmith.models.structures", "STRUCTURES")

    @field_validator("enabled_heads", "tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one task")
        for name in value:
            if not TASK_NAME.match(name):
                raise ValueError(f"task name '{name}' must be lower-case letters, digits and '_'")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a task twice: {value}")
        return value

    @field_validator("deep_hidden_dims", "tower_hidden_dims")
    @classmethod
    def _positive_dims(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"every width must be ≥ 1, got {value}")
        return value


class ESMMConfig(Strict):
    version: Literal["v1", "v2"] = "v2"
    lambda_cvr_aux: Optional[float] = Field(None, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _aux_weight(self):
        if self.version == "v1" and self.lambda_cvr_aux:
            raise ValueError(
                "esmm.lambda_cvr_aux: ESMM v1 has no auxiliary CVR loss; use esmm.version v2"
            )
        if self.lambda_cvr_aux is None:
            self.lambda_cvr_aux = 0.1 if self.version == "v2" else 0.0
        return self


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


class LRSchedulerConfig(Strict):
    type: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    total_steps: Optional[int] = Field(None, ge=1)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


class BestSelectionConfig(Strict):
    primary_key: str = "auc_ctr"
    mode: Literal["max", "min"] = "max"


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
    """One training run. Loaded by recsmith.config.loader (which resolves `extends:`)."""

    name: str = "experiment"
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    use_esmm: bool = False
    esmm: ESMMConfig = Field(default_factory=ESMMConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lr_scheduler: LRSchedulerConfig = Field(default_factory=LRSchedulerConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    topk: TopKConfig = Field(default_factory=TopKConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model.family == "sequential":
            self._check_schedule()
            self._check_primary_key()
            return self
        heads, model = set(self.model.enabled_heads), self.model
        if set(model.tasks) != heads:
            raise ValueError(
                f"model.tasks {model.tasks} must name the same tasks as "
                f"model.enabled_heads {model.enabled_heads} (every head is trained)"
            )
        if model.mtl == "single" and len(heads) != 1:
            raise ValueError(f"model.mtl 'single' takes one head, got {model.enabled_heads}")
        if model.mtl != "single" and len(heads) < 2:
            raise ValueError(f"model.mtl '{model.mtl}' needs two heads, got {model.enabled_heads}")
        if self.use_esmm:
            if heads != {"ctr", "cvr"}:
                raise ValueError("use_esmm: ESMM needs model.enabled_heads [ctr, cvr]")
            if self.data.neg_keep_prob_train != 1.0:
                raise ValueError(
                    "data.neg_keep_prob_train: ESMM is trained on the entire impression space; "
                    "negative down-sampling must be off (1.0)"
                )
        if self.data.train_subset == "clicked" and len(heads) != 1:
            raise ValueError(
                "data.train_subset 'clicked' trains one head on the rows where its label is "
                "observed (a CVR-only model on clicks); model.enabled_heads must name one head"
            )
        if model.mtl == "ple" and set(model.ple.specific_num_experts) != heads:
            raise ValueError(
                f"model.ple.specific_num_experts must have one entry per head {sorted(heads)}, "
                f"got {sorted(model.ple.specific_num_experts)}"
            )
        if model.mtl == "ple" and model.ple.hetero_enabled:
            if set(model.ple.experts.specific) != heads:
                raise ValueError(
                    f"model.ple.experts.specific must have one entry per head {sorted(heads)}"
                )
        self._check_schedule()
        self._check_primary_key()
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

    def _check_primary_key(self) -> None:
        from recsmith.errors import did_you_mean
        from recsmith.metrics.funnel import lower_is_better, selectable_metrics
        from recsmith.metrics.ranking import sequential_metric_names

        key, mode = self.runtime.best_selection.primary_key, self.runtime.best_selection.mode
        if self.model.family == "sequential":
            allowed, what = sequential_metric_names(self.topk.cutoffs) + ["loss"], "sequential models"
        else:
            allowed = selectable_metrics(self.model.enabled_heads, self.data.source == "synthetic")
            what = f"heads {self.model.enabled_heads}"
        if key not in allowed:
            raise ValueError(
                f"runtime.best_selection.primary_key: '{key}' is not a metric of this experiment "
                f"({what}; choose from {', '.join(allowed)})"
                f"{did_you_mean(key, allowed)}"
            )
        expected = "min" if lower_is_better(key) else "max"
        if mode != expected:
            raise ValueError(
                f"runtime.best_selection.mode: '{key}' is {'lower' if expected == 'min' else 'higher'}"
                f" is better, so the mode must be '{expected}', not '{mode}'"
            )
