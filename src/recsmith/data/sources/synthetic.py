"""The built-in synthetic funnel as a source (the generator is recsmith.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

from recsmith.data.prepare import prepare_cached
from recsmith.data.sources import SOURCES, Progress, cache_root


@SOURCES.register("synthetic")
def synthetic_funnel(data_cfg, progress: Progress = None) -> Path:
    """Generated once per (knobs, seed) and cached."""
    from recsmith.data.synthetic import SyntheticFunnel, dataset_key, write_feature_definitions
    from recsmith.features.pipeline import FEATURES_FILE

    knobs = data_cfg.synthetic

    def build(staging: Path, rejects: Path) -> None:  # generated rows are never malformed
        SyntheticFunnel(knobs, data_cfg.seed).write(
            staging, (lambda done: progress(done, knobs.rows)) if progress else None)

    directory = prepare_cached(cache_root() / "synthetic" / dataset_key(knobs, data_cfg.seed), build)
    if not (directory / FEATURES_FILE).is_file():  # cached by a recsmith that did not write them yet
        write_feature_definitions(directory)
    return directory
