"""A chain: a base config, experiments that each override a few keys of it, the fields
locked across all of them, and the comparisons its delta analysis makes.

Chain files may `extends:` another chain file (e.g. the paper-scale chain extends the
quick one and only changes `set:`). Paths inside a chain file are relative to that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recsmith.config.diff import differences
from recsmith.config.loader import (
    Provenance, display_path, get_dotted, load_with_extends, resolve_experiment, source_of, validate_model,
)
from recsmith.config.schema import ExperimentConfig
from recsmith.errors import ChainError, ConfigError, did_you_mean
from recsmith.experiments.keep import SaveModel

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ChainExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    description: str = ""
    config: Optional[str] = None  # None: the chain's base
    set: dict[str, Any] = {}  # this experiment's overrides, after the chain's `set`

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError(f"experiment id '{value}' may use letters, digits, '_', '.', '-'")
        return value


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: str
    baseline: str
    candidate: str
    metrics: list[str] = Field(min_length=1)
    question: str = ""


class ChainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str = ""
    base: str
    output_dir: Optional[str] = None
    locked_fields: list[str] = []
    set: dict[str, Any] = {}
    experiments: list[ChainExperiment] = Field(min_length=1)
    comparisons: list[Comparison] = []
    save_model: SaveModel = Field(default_factory=SaveModel)  # top_k: keep the k best runs' checkpoints

    @model_validator(mode="after")
    def _ids(self):
        ids = [e.id for e in self.experiments]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"experiments: ids listed twice: {duplicates}")
        for comparison in self.comparisons:
            for role in ("baseline", "candidate"):
                exp_id = getattr(comparison, role)
                if exp_id not in ids:
                    raise ValueError(f"comparisons '{comparison.title}': {role} '{exp_id}' is not an "
                                     f"experiment of this chain{did_you_mean(exp_id, ids)}")
        return self


@dataclass
class ResolvedExperiment:
    id: str
    description: str
    config_file: Path
    config: ExperimentConfig
    provenance: Provenance

    @property
    def data(self) -> dict:
        return self.config.model_dump(mode="json")


@dataclass
class ResolvedChain:
    path: Path
    spec: ChainConfig
    base: ExperimentConfig
    experiments: list[ResolvedExperiment]
    output_dir: Path

    def select(self, only: list[str] | None = None, skip: list[str] | None = None) -> list[ResolvedExperiment]:
        ids = [e.id for e in self.experiments]
        for flag, chosen in (("--only", only or []), ("--skip", skip or [])):
            for exp_id in chosen:
                if exp_id not in ids:
                    raise ChainError(f"{flag}: unknown experiment '{exp_id}' (this chain has "
                                     f"{', '.join(ids)}){did_you_mean(exp_id, ids)}")
        return [e for e in self.experiments if (not only or e.id in only) and e.id not in (skip or [])]


def load_chain(path: str | Path, overrides: dict[str, Any] | None = None,
               output_dir: str | Path | None = None) -> ResolvedChain:
    """Read, resolve and check a chain: every experiment validates and locked fields agree."""
    path = Path(path)
    raw, provenance = load_with_extends(path)
    spec = validate_model(ChainConfig, raw, provenance, where=str(path))

    def relative(key: str, value: str) -> Path:  # paths are relative to the file that set them
        origin = Path(source_of(key, provenance) or path)
        return (origin.parent / value).resolve()

    chain_source = f"set: of {display_path(path)}"
    base_file = relative("base", spec.base)
    base, _ = _resolve(base_file, overrides, spec.set, chain_source, "base")
    experiments = []
    for exp in spec.experiments:
        config_file = relative("experiments", exp.config) if exp.config else base_file
        named = {} if exp.config else {"name": f"{spec.name}_{exp.id}"}  # a run of the base: the tracker tells them apart
        config, exp_provenance = _resolve(config_file, overrides, {**named, **spec.set, **exp.set}, chain_source, exp.id)
        experiments.append(ResolvedExperiment(exp.id, exp.description, config_file, config, exp_provenance))
    chain = ResolvedChain(path, spec, base, experiments,
                          Path(output_dir or spec.output_dir or Path("runs") / spec.name))
    check_locked_fields(chain)
    return chain


def _resolve(config_file: Path, overrides, chain_set, chain_source: str, label: str):
    try:
        return resolve_experiment(config_file, overrides, chain_set, chain_source)
    except ConfigError as exc:
        lines = str(exc).removeprefix(f"{ConfigError.kind}: ").splitlines()
        raise ConfigError("\n".join(f"{label} ({display_path(config_file)}): {line}" for line in lines)) from None


def check_locked_fields(chain: ResolvedChain) -> None:
    base = chain.base.model_dump(mode="json")
    configs = [base] + [exp.config.model_dump(mode="json") for exp in chain.experiments]  # what the keys can be
    problems = []
    for key in chain.spec.locked_fields:
        if all(get_dotted(config, key, _MISSING) is _MISSING for config in configs):
            problems.append(f"locked_fields: '{key}' is not a config key")
            continue
        expected = get_dotted(base, key)
        for exp in chain.experiments:
            value = get_dotted(exp.data, key)
            if value != expected:
                where = source_of(key, exp.provenance) or str(exp.config_file)
                where = display_path(where) if Path(where).is_file() else where
                problems.append(f"locked field {key} differs: {exp.id} has {value!r}, the base has "
                                f"{expected!r} (set in {where})")
    if problems:
        raise ChainError("\n".join(problems))


_MISSING = object()


def diff_from_base(chain: ResolvedChain, exp: ResolvedExperiment) -> list[tuple[str, Any, Any]]:
    """(dotted key, base value, experiment value) for every leaf that differs; a section only
    one of them has (a structure's own) shows `(absent)` on the other side."""
    diff = differences(chain.base.model_dump(mode="json"), exp.data)
    return [(k, old, new) for k, (old, new) in diff.items() if k not in ("name", "description")]
