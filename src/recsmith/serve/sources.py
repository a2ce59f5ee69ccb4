"""Where served models come from: a registry reference (`name`, `name@production`,
`name@v3`) or a path (a bundle dir from `recsmith export` / the registry, or a run dir)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from recsmith.serve.routing import LoadedModel
from recsmith.serve.scorer import Scorer


class ModelSource:
    """Resolves references to (label, path) and loads them, keeping loaded models by label
    so that polling the registry costs a lookup, not a load."""

    def __init__(self, registry_root: Optional[str | Path] = None, keep: int = 4):
        self.registry_root, self.keep = registry_root, keep
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> tuple[str, Path]:
        path = Path(ref).expanduser()
        if path.is_dir():
            return str(path), path
        from recsmith.serve.model_registry import ModelRegistry

        version = ModelRegistry(self.registry_root).resolve(ref)
        return version.ref, version.path

    def label(self, ref: str) -> str:
        return self.resolve(ref)[0]

    def load(self, ref: str) -> LoadedModel:
        label, path = self.resolve(ref)
        with self._lock:
            if label in self._loaded:
                return self._loaded[label]
        model = LoadedModel(label, Scorer.load(path))
        with self._lock:
            self._loaded[label] = model
            while len(self._loaded) > self.keep:  # oldest first
                self._loaded.pop(next(iter(self._loaded)))
        return model
