"""The ranking family's `model:` mapping: backbone, structure, heads, towers, ESMM. A
structure with settings owns the section named after it (`model.mmoe`, `model.ple`),
validated by the structure's own config model (recsmith.models.structures)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from recsmith.config.schema import TASK_NAME, ModelSection, Strict, registered


class ESMMConfig(Strict):
    """ESMM: train the funnel pair's composed output (recsmith.tasks) over every impression."""

    enabled: bool = False
    version: Literal["v1", "v2"] = "v2"
    lambda_cvr_aux: Optional[float] = Field(None, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _aux_weight(self):
        if self.version == "v1" and self.lambda_cvr_aux:
            raise ValueError("model.esmm.lambda_cvr_aux: ESMM v1 has no auxiliary CVR loss; use model.esmm.version v2")
        if self.lambda_cvr_aux is None:
            self.lambda_cvr_aux = 0.1 if self.version == "v2" else 0.0
        return self


class RankingModelConfig(ModelSection):
    family: str = "ranking"
    backbone: str = "deepfm"
    deep_hidden_dims: list[int] = [256, 128]
    fm_projection_dim: int = Field(16, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mtl: str = "sharedbottom"
    enabled_heads: list[str] = ["ctr", "cvr"]
    tower_hidden_dims: list[int] = [64]
    esmm: ESMMConfig = Field(default_factory=ESMMConfig)

    _check_backbone = registered("backbone", "recsmith.models.backbones", "BACKBONES")
    _check_mtl = registered("mtl", "recsmith.models.structures", "STRUCTURES")

    @field_validator("enabled_heads")
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

    def section(self, structure: str) -> Optional[BaseModel]:
        """The validated `model.<structure>` section, or its defaults (None: no settings)."""
        from recsmith.models.structures import STRUCTURES

        given = (self.__pydantic_extra__ or {}).get(structure)
        if given is not None:
            return given
        config = STRUCTURES.get(structure, "model.mtl").config
        return config() if config is not None else None


