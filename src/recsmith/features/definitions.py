"""Feature definitions in YAML: what each model input is, where it comes from, how it is
encoded, and who owns it.

    features:
      - name: user_id
        type: categorical            # categorical → an embedded id; numeric → a dense value
        entity: user                 # user | item | context
        source: uid                  # raw column (default: the name)
        transformation: {kind: vocab, min_count: 2, max_size: 100000}
        owner: ads-ranking
        tags: [id]
      - name: price
        type: numeric
        transformation: {kind: standardize, log1p: true}

Categorical kinds: `vocab` (a vocabulary fitted on the training split: values seen at
least `min_count` times, the `max_size` most frequent; anything else → id 0; a model
update extending an earlier vocabulary keeps its values and appends at most `max_size`
new ones),
`identity` (integer ids already in [0, size); out of range → a rejected row), `bucketize`
(numeric values cut at `boundaries`, or at `num_buckets` quantiles fitted on training
data). Numeric kinds: `standardize` ((x − mean) / std), `minmax`, `none`. `log1p: true`
applies log(1 + x) first. Missing numeric values become `fill` (after scaling; 0 is the
mean for `standardize`); missing or unseen categories become id 0.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CATEGORICAL_KINDS = ("vocab", "identity", "bucketize")
NUMERIC_KINDS = ("standardize", "minmax", "none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Transformation(_Strict):
    kind: Literal["vocab", "identity", "bucketize", "standardize", "minmax", "none"]
    min_count: int = Field(1, ge=1)
    max_size: Optional[int] = Field(None, ge=1)
    size: Optional[int] = Field(None, ge=1)
    boundaries: Optional[list[float]] = None
    num_buckets: Optional[int] = Field(None, ge=2, le=100_000)
    log1p: bool = False
    fill: float = 0.0

    @model_validator(mode="after")
    def _parameters(self):
        if self.kind == "identity" and self.size is None:
            raise ValueError("an 'identity' transformation needs size (ids lie in [0, size))")
        if self.kind == "bucketize" and (self.boundaries is None) == (self.num_buckets is None):
            raise ValueError("a 'bucketize' transformation needs boundaries or num_buckets (one of them)")
        if self.boundaries is not None and sorted(set(self.boundaries)) != self.boundaries:
            raise ValueError(f"boundaries must increase strictly, got {self.boundaries}")
        return self


class FeatureSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["categorical", "numeric"]
    entity: Literal["user", "item", "context"] = "context"
    source: Optional[str] = None
    transformation: Transformation
    owner: str = ""
    tags: list[str] = []
    description: str = ""

    @property
    def column(self) -> str:
        return self.source or self.name

    @model_validator(mode="after")
    def _kind_fits_type(self):
        allowed = CATEGORICAL_KINDS if self.type == "categorical" else NUMERIC_KINDS
        if self.transformation.kind not in allowed:
            raise ValueError(f"feature '{self.name}': a {self.type} feature takes a transformation "
                             f"of kind {', '.join(allowed)}, not '{self.transformation.kind}'")
        return self


def unique_features(features: list[FeatureSpec]) -> list[FeatureSpec]:
    """`features`, or a ValueError naming the names defined twice (a validator's check)."""
    names = [f.name for f in features]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"features defined twice: {twice}")
    return features


class FeatureSet(_Strict):
    features: list[FeatureSpec] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _unique(cls, value: list[FeatureSpec]) -> list[FeatureSpec]:
        return unique_features(value)

    @property
    def categorical(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.type == "categorical"]

    @property
    def numeric(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.type == "numeric"]

    @property
    def columns(self) -> list[str]:
        return sorted({f.column for f in self.features})
