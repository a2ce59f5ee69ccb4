"""Where served models come from: a registry reference (`name`, `name@production`,
`name@v3`) or, where local models are allowed, a path (a bundle dir from `recsmith export` /
the registry, or a run dir).

The command line may name any path (its user can read the disk anyway); the admin API may
not, unless the service was started with `--allow-local-models`: a request then names only
registry references, whose names are checked and whose bundles must lie under the registry
root (`ModelRegistry`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

from recsmith.serve.model_registry import ModelRegistry, ReferenceRefused
from recsmith.serve.routing import LoadedModel
from recsmith.serve.scorer import Scorer


class LocalModelsRefused(ReferenceRefused):
    """A path where only registry references are accepted."""


class ModelSource:
    """Resolves references to (label, path) and loads them, keeping loaded models by label
    so that polling the registry costs a lookup, not a load."""

    def __init__(self, registry_root: Optional[str | Path] = None, keep: int = 4, backend: str = "torch"):
        self.registry_root, self.keep, self.backend = registry_root, keep, backend
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str, local: bool = True) -> tuple[str, Path]:
        """(label, bundle or run dir) of `ref`; a path only when `local` is allowed."""
        if local:
            path = Path(ref).expanduser()
            if path.is_dir():
                return str(path), path
        elif _looks_like_path(ref):
            raise LocalModelsRefused(f"'{ref}' is a path: only registry references (NAME, NAME@STAGE, NAME@vN) "
                                     "are accepted here unless the service runs with --allow-local-models")
        version = ModelRegistry(self.registry_root).resolve(ref)
        return version.ref, version.path

    def label(self, ref: str) -> str:
        return self.resolve(ref)[0]

    def load(self, ref: str, local: bool = True) -> LoadedModel:
        return self.load_resolved(*self.resolve(ref, local))

    def load_resolved(self, label: str, path: Path) -> LoadedModel:
        """The model at `path` (as `resolve` returned it), loaded once per label."""
        with self._lock:
            if label in self._loaded:
                return self._loaded[label]
        model = LoadedModel(label, Scorer.load(path, self.backend))
        with self._lock:
            self._loaded[label] = model
            while len(self._loaded) > self.keep:  # oldest first
                self._loaded.pop(next(iter(self._loaded)))
        return model


def _looks_like_path(ref: str) -> bool:
    # a registry name has no separator and does not start with '.' or '~' (NAME_PATTERN), so
    # these are paths; anything else goes to the registry, which checks the name strictly
    return os.sep in ref or "/" in ref or ref.startswith((".", "~"))
