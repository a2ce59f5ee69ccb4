"""The next-item family's `model:` mapping: `model.sequential` (the architecture and the
settings its models share) with the architectures' own sections inside it (DIN's, the
boosters'), each owned by the architectures that read it (architectures.py)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from recsmith.config.schema import ModelSection, Strict


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
    """LightGBM on the explicit features (the fitted boosters)."""

    num_leaves: int = Field(31, ge=2, le=65536)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_boost_round: int = Field(500, ge=1, le=100_000)
    early_stopping_rounds: int = Field(30, ge=1)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0.0, le=1.0)


class SequentialConfig(Strict):
    """A next-item model over the user's time-ordered history. `architecture` names one of
    recsmith.models.sequential.architectures.ARCHITECTURES: neural ones trained by the
    Trainer, fitted ones (counts, boosters) fitted directly. An architecture's own settings
    are its section (`din`, `lightgbm`), validated by the family with the architecture's config."""

    model_config = Strict.model_config | {"extra": "allow"}
    architecture: str = "sasrec"
    hybrid_din_run: Optional[str] = None  # a trained DIN's run dir for the hybrid; relative = beside this run's dir
    max_length: int = Field(50, ge=2, le=1000)  # most recent history items a prediction sees
    hidden_dim: int = Field(64, ge=1, le=4096)
    num_layers: int = Field(2, ge=1, le=16)
    num_heads: int = Field(2, ge=1, le=64)
    inner_dim: int = Field(256, ge=1, le=16384)  # SASRec's point-wise feed-forward width
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    objective: Optional[Literal["softmax", "bce"]] = None  # None: the architecture's own

    @model_validator(mode="after")
    def _architecture_settings(self):
        from recsmith.models.sequential.architectures import ARCHITECTURES

        ARCHITECTURES.check(self.architecture)
        arch = ARCHITECTURES.lookup(self.architecture)
        for key in arch.requires:
            if not getattr(self, key):
                raise ValueError(f"{key}: required for architecture {self.architecture}")
        if self.objective is None:
            self.objective = arch.objective
        elif self.objective != arch.objective:
            raise ValueError(f"objective '{self.objective}': {self.architecture} is trained with '{arch.objective}' "
                             "here (softmax = cross-entropy over all items; bce = candidate click loss)")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}")
        return self


class SequentialModelConfig(ModelSection):
    model_config = ModelSection.model_config | {"extra": "forbid"}
    family: str = "sequential"
    sequential: SequentialConfig = Field(default_factory=SequentialConfig)
