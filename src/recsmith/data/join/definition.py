"""The join definition: a small YAML file naming the four logs, the join key, the
attribution window and the output. Validated on load like every recsmith config: an
unknown key, a wrong type or a bad value fails with one line naming the key.

```yaml
impressions: logs/impressions/          # a Parquet/CSV file, a directory of them, or a glob
clicks: logs/clicks/*.parquet
conversions: logs/conversions.csv
feature_log: logs/features/             # optional
output: samples/train.parquet
join_key: impression_id                 # or request_id: the key clicks carry
attribution_window: 7d                  # whole seconds, or a number with s, m, h, d or w
feature_prefix: ""                      # put before every feature-log column name
engine: duckdb                          # or spark
columns:                                # only where the logs use other names
  request_id: request_id
  impression_id: impression_id
  click_id: click_id
  ts: ts
```

Relative paths in a file are relative to the file's directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from recsmith.config.loader import read_yaml, validate_model
from recsmith.config.schema import Strict, registered

_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_window(value: Any) -> int:
    """Whole seconds from `3600`, `"3600"`, `"90m"`, `"12h"`, `"7d"` or `"2w"`."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected whole seconds or a duration like '7d' (units s, m, h, d, w), "
                         f"got {value!r}")
    if seconds < 0:
        raise ValueError(f"must be ≥ 0 seconds, got {value!r}")
    return seconds


class JoinColumns(Strict):
    """Column names in the logs, where they differ from the defaults. `ts` names the
    event time in impressions, clicks, conversions (and, if present, the feature log)."""

    request_id: str = Field("request_id", min_length=1)
    impression_id: str = Field("impression_id", min_length=1)
    click_id: str = Field("click_id", min_length=1)
    ts: str = Field("ts", min_length=1)


class JoinDefinition(Strict):
    """Inputs, rules and output of one sample join (see recsmith.data.join)."""

    impressions: str = Field(min_length=1)
    clicks: str = Field(min_length=1)
    conversions: str = Field(min_length=1)
    feature_log: Optional[str] = Field(None, min_length=1)
    output: str = Field(min_length=1)
    join_key: Literal["impression_id", "request_id"] = "impression_id"
    attribution_window: int = Field(description="seconds; YAML may say '7d', '12h', '90m'")
    feature_prefix: str = ""
    engine: str = "duckdb"
    columns: JoinColumns = Field(default_factory=JoinColumns)

    _check_engine = registered("engine", "recsmith.data.join", "ENGINES")

    @field_validator("attribution_window", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> int:
        return parse_window(value)

    @property
    def key_column(self) -> str:
        """The name of the column clicks and impressions are joined on."""
        return getattr(self.columns, self.join_key)

    def resolved(self, base: Path) -> "JoinDefinition":
        """A copy whose relative paths are taken relative to `base`."""
        def under(path: Optional[str]) -> Optional[str]:
            return None if path is None else str(base / Path(path).expanduser())

        return self.model_copy(update={name: under(getattr(self, name)) for name in
                                       ("impressions", "clicks", "conversions", "feature_log", "output")})


def validate_definition(data: dict, source: str = "") -> JoinDefinition:
    """A JoinDefinition from a mapping, or a ConfigError with one line per problem."""
    return validate_model(JoinDefinition, data, where=source)


def load_definition(path: str | Path) -> JoinDefinition:
    """Read and validate a join definition file; relative paths become relative to it."""
    path = Path(path)
    definition = validate_definition(read_yaml(path), str(path))
    return definition.resolved(path.resolve().parent)
