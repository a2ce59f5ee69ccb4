"""Plug-ins: model families are found by name in `FAMILIES`, never imported by the code that
uses them, so training, evaluation, bundles, the scorer, export and the service work for
any family that registers itself.

The built-in families register when `recsmith.families` is imported (on the first lookup).
A config's `plugins:` list names more: a Python file (a path, relative to the config file
that lists it) or an importable module, imported before the config is validated, so it can
register a family, a structure, an expert type, a gate, ... with the registries' decorators.
A plug-in is code: list only files you would run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from recsmith.errors import ConfigError
from recsmith.registry import Registry

FAMILIES: Registry = Registry("model family")
BUILTIN = "recsmith.families"
DEFAULT_FAMILY = "ranking"  # what `model.family` is when a config does not say
_loaded: set[str] = set()


def family(name: str, key: str = "model.family"):
    """The registered family called `name` (a ConfigError naming `key` otherwise)."""
    importlib.import_module(BUILTIN)
    return FAMILIES.get(name, key)


def family_of(cfg):
    """The family of a validated ExperimentConfig."""
    return family(cfg.model.family)


def check_family(name: str) -> str:
    """For config validators: a ValueError unless `name` is a registered family."""
    importlib.import_module(BUILTIN)
    FAMILIES.check(name)
    return name


def load_plugins(entries: list[str]) -> None:
    """Import each plug-in once: `*.py` paths (absolute by now) or module names."""
    for entry in entries:
        if entry in _loaded:
            continue
        try:
            if entry.endswith(".py"):
                _import_file(Path(entry))
            else:
                importlib.import_module(entry)
        except ConfigError:
            raise
        except FileNotFoundError:
            raise ConfigError(f"plugins: file not found: {entry}") from None
        except ModuleNotFoundError as exc:
            raise ConfigError(f"plugins: cannot import '{entry}' ({exc})") from None
        except Exception as exc:  # the plug-in's own error: name it, keep it one line
            raise ConfigError(f"plugins: importing {entry} failed: {type(exc).__name__}: {exc}") from None
        _loaded.add(entry)


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(path)
    name = f"recsmith_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
