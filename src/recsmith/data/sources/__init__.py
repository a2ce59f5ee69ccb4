"""Dataset sources: each turns a `data` config into a prepared dataset directory.

Only the source modules know raw formats; everything downstream reads the dataset
directory through its schema. A source is registered under the name `data.source`
selects, and is called as `source(data_cfg, progress) -> Path`. Sources that read raw
files take `data.path` (or a folder under $RECSMITH_DATA), validate their own
`data.options`, and cache the prepared result under $RECSMITH_CACHE. Sources that
prepare through `prepare_tabular` are marked `@extends_vocab`: they honour
`data.extend_vocab_from` (a model update's base dataset, see `vocab_base`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel

from recsmith.data.schema import SPLITS, VOCAB_FILE, DatasetSchema
from recsmith.errors import ConfigError, DataError
from recsmith.registry import Registry

Progress = Optional[Callable[[int, int], None]]  # (done, total)
SOURCES: Registry[Callable] = Registry("data source")


def cache_root() -> Path:
    """Where prepared datasets are cached: $RECSMITH_CACHE, else ~/.cache/recsmith."""
    return Path(os.environ.get("RECSMITH_CACHE") or Path.home() / ".cache" / "recsmith")


def cache_dir(source: str, payload: dict) -> Path:
    """A cache folder named by a hash of everything that determines the prepared data."""
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / source / key


def raw_data_dir(data_cfg, default_name: str, what: str, hint: str = "") -> Path:
    """The raw files' folder: data.path, else $RECSMITH_DATA/<default_name>."""
    if data_cfg.path:
        path = Path(data_cfg.path).expanduser()
        where = "data.path"
    elif os.environ.get("RECSMITH_DATA"):
        path = Path(os.environ["RECSMITH_DATA"]).expanduser() / default_name
        where = "RECSMITH_DATA"
    else:
        raise DataError(f"data.path: where is {what}? Pass --set data.path=DIR or set RECSMITH_DATA "
                        f"to the folder holding {default_name}/{'; ' + hint if hint else ''}")
    if not path.exists():
        raise DataError(f"{where}: {what} not found at {path}{'; ' + hint if hint else ''}")
    return path


def source_options(model: type[BaseModel], data_cfg) -> BaseModel:
    """`data.options` validated by a source's own options model (errors name the key)."""
    from recsmith.config.loader import validate_model

    return validate_model(model, data_cfg.options, prefix="data.options.")


def extends_vocab(source: Callable) -> Callable:
    """Marks a source that honours `data.extend_vocab_from` (passes `vocab_base` to prepare_tabular)."""
    source.extends_vocab = True
    return source


def can_extend_vocab(source: str) -> bool:
    return source in SOURCES and getattr(SOURCES.get(source), "extends_vocab", False)


def vocab_base(data_cfg) -> tuple[Optional[Path], dict]:
    """(the prepared dataset whose fitted encoders this preparation extends, from
    `data.extend_vocab_from`, or None; its part of the cache key: the base's encoder files,
    so a dataset extended from a base is cached apart, and {} without one)."""
    if not data_cfg.extend_vocab_from:
        return None, {}
    from recsmith.features.pipeline import FEATURES_FILE

    base = Path(data_cfg.extend_vocab_from).expanduser().resolve()
    files = [base / FEATURES_FILE, base / VOCAB_FILE]
    if not all(f.is_file() for f in files):
        raise ConfigError(f"data.extend_vocab_from: {base} is not a prepared dataset with fitted encoders "
                          f"({FEATURES_FILE} and {VOCAB_FILE})")
    return base, {"extend_vocab_from": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


def resolve_dataset(data_cfg, progress: Progress = None) -> Path:
    """The prepared dataset directory for a `data` config, preparing it if needed."""
    source = SOURCES.get(data_cfg.source, "data.source")
    if data_cfg.extend_vocab_from and not getattr(source, "extends_vocab", False):
        raise ConfigError(f"data.extend_vocab_from: the '{data_cfg.source}' source cannot extend vocabularies "
                          "(its ids are fixed); remove the key")
    return source(data_cfg, progress)


def check_dataset_dir(path: Path) -> DatasetSchema:
    schema = DatasetSchema.load(path)
    missing = [s for s in SPLITS if not (path / f"{s}.parquet").is_file()]
    if missing:
        raise DataError(f"{path}: missing split files {', '.join(s + '.parquet' for s in missing)}")
    return schema


@SOURCES.register("dir")
def prepared_directory(data_cfg, progress: Progress = None) -> Path:
    """A dataset directory prepared earlier (`data.path`)."""
    if not data_cfg.path:
        raise DataError("data.path: required when data.source is 'dir'")
    path = Path(data_cfg.path).expanduser()
    if not path.is_dir():
        raise DataError(f"data.path: dataset directory not found: {path}")
    check_dataset_dir(path)
    return path


from recsmith.data.sources import ali_ccp, census, movielens, synthetic, table, text  # noqa: E402,F401  (register)
