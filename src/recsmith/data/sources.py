"""Dataset sources: each turns a `data` config into a prepared dataset directory.

Only this module (and the source modules it calls) knows raw formats; everything
downstream reads the dataset directory through its schema.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from recsmith.data.schema import SCHEMA_FILE, SPLITS, DatasetSchema
from recsmith.errors import DataError
from recsmith.registry import Registry

Progress = Optional[Callable[[int, int], None]]  # (done, total)
SOURCES: Registry[Callable] = Registry("data source")


def cache_root() -> Path:
    """Where generated datasets are cached: $RECSMITH_CACHE, else ~/.cache/recsmith."""
    return Path(os.environ.get("RECSMITH_CACHE") or Path.home() / ".cache" / "recsmith")


def resolve_dataset(data_cfg, progress: Progress = None) -> Path:
    """The prepared dataset directory for a `data` config, preparing it if needed."""
    return SOURCES.get(data_cfg.source, "data.source")(data_cfg, progress)


@SOURCES.register("dir")
def prepared_directory(data_cfg, progress: Progress = None) -> Path:
    """A dataset directory prepared earlier (`data.path`)."""
    path = Path(data_cfg.path).expanduser()
    if not path.is_dir():
        raise DataError(f"data.path: dataset directory not found: {path}")
    check_dataset_dir(path)
    return path


@SOURCES.register("synthetic")
def synthetic_funnel(data_cfg, progress: Progress = None) -> Path:
    """The built-in synthetic funnel, generated once per (knobs, seed) and cached."""
    from recsmith.data.synthetic import SyntheticFunnel, dataset_key

    knobs = data_cfg.synthetic
    target = cache_root() / "synthetic" / dataset_key(knobs, data_cfg.seed)
    if (target / SCHEMA_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        funnel = SyntheticFunnel(knobs, data_cfg.seed)
        funnel.write(staging, (lambda done: progress(done, knobs.rows)) if progress else None)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / SCHEMA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_dataset_dir(path: Path) -> DatasetSchema:
    schema = DatasetSchema.load(path)
    missing = [s for s in SPLITS if not (path / f"{s}.parquet").is_file()]
    if missing:
        raise DataError(f"{path}: missing split files {', '.join(s + '.parquet' for s in missing)}")
    return schema
