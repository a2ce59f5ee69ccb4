"""YAML loading with `extends:`, `--set dotted.key=value` overrides and one-line errors.

A config file may name one or more parents with `extends:` (paths relative to the file);
parents are merged first, then the file itself, then overrides. Dicts merge key by key,
everything else (lists included) is replaced. Every leaf remembers where it came from, so
an error can say which file (or `--set`) to fix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from recsmith.config.schema import ExperimentConfig
from recsmith.errors import ConfigError, did_you_mean

Provenance = dict[str, str]  # dotted key -> source (file path or "--set")


# ------------------------------------------------------------------------- reading
def read_yaml(path: Path) -> dict:
    """A YAML mapping from `path`, or a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_with_extends(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, Provenance]:
    """Resolve `extends:` recursively; return the merged dict and each leaf's source file."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"circular extends: {chain}")
    raw = read_yaml(path)
    if isinstance(raw.get("plugins"), list):  # a plug-in file is relative to the config that lists it
        raw["plugins"] = [str((path.parent / p).resolve()) if isinstance(p, str) and p.endswith(".py") else p
                          for p in raw["plugins"]]
    parents = raw.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends must be a path or a list of paths")
    merged: dict = {}
    provenance: Provenance = {}
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        if not parent_path.is_file():
            raise ConfigError(f"{path}: extends '{parent}', which does not exist ({parent_path})")
        data, prov = load_with_extends(parent_path, (*_seen, path))
        deep_merge(merged, data, provenance, prov)
    deep_merge(merged, raw, provenance, _leaves(raw, str(path)))
    return merged, provenance


def display_path(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _leaves(data: Mapping, source: str, prefix: str = "") -> Provenance:
    out: Provenance = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, source, dotted + "."))
        else:
            out[dotted] = source
    return out


def deep_merge(base: dict, update: Mapping, provenance: Provenance | None = None,
               update_provenance: Provenance | None = None) -> dict:
    """Merge `update` into `base` in place: dicts recursively, other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    if provenance is not None and update_provenance:
        provenance.update(update_provenance)
    return base


# ----------------------------------------------------------------------- overrides
def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["a.b=1", "c=[1, 2]"]` → `{"a.b": 1, "c": [1, 2]}`; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects dotted.key=value, got '{item}'")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot read value '{text}' as YAML") from None
    return out


def apply_overrides(data: dict, overrides: Mapping[str, Any], provenance: Provenance | None = None,
                    source: str = "--set") -> dict:
    """Set dotted keys in `data` in place, creating intermediate mappings."""
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                parent = ".".join(parts[: i + 1])
                raise ConfigError(f"{source} {dotted}: '{parent}' is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
        if provenance is not None:
            provenance[dotted] = source
    return data


def get_dotted(data: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# ---------------------------------------------------------------------- validation
M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: Any, provenance: Provenance | None = None,
                   where: str = "", prefix: str = "") -> M:
    """`model` validated from `data`, or a ConfigError with one line per problem, each
    naming the dotted key (after `prefix`), the value, and the file that set it
    (from `provenance`, else `where`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, model, provenance or {}, where, prefix) for err in _merge_unions(exc.errors())]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def validate_experiment(data: dict, provenance: Provenance | None = None) -> ExperimentConfig:
    """An ExperimentConfig from a merged dict, or one ConfigError line per problem: the
    plug-ins imported, the common sections validated, then `model:` by its family (with
    the sections of its components), the family's cross-field rules and the primary key."""
    from recsmith.plugins import family, load_plugins

    provenance = {} if provenance is None else provenance
    data = migrate_legacy_keys(copy.deepcopy(data), provenance)
    load_plugins(_plugin_entries(data.get("plugins", [])))
    cfg = validate_model(ExperimentConfig, data, provenance)
    owner = family(cfg.model.family)
    cfg.model = owner.validate(data.get("model") or {}, provenance)
    owner.check(cfg)
    cfg.check_primary_key(*owner.selectable_metrics(cfg))
    return cfg


def _plugin_entries(entries: Any) -> list[str]:
    """`plugins` as absolute file paths (relative ones: to the working directory; a config
    file's own are made absolute when it is read) or module names."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"plugins: expected a list of Python files or module names, got {entries!r}")
    return [str(Path(e).expanduser().resolve()) if e.endswith(".py") else e for e in entries]


# keys read from configs written before they moved: old name -> new dotted name
LEGACY_KEYS = {"use_esmm": "model.esmm.enabled", "esmm": "model.esmm"}


def migrate_legacy_keys(data: dict, provenance: Provenance) -> dict:
    """Configs (and bundles, run dirs) written before ESMM moved under `model.esmm` and
    before the heads were listed once: their keys moved in place, so they still load."""
    model = data.get("model")
    if isinstance(model, dict) and "tasks" in model:
        tasks = model.pop("tasks")
        if tasks != model.get("enabled_heads", tasks):
            raise ConfigError(f"model.tasks {tasks} differs from model.enabled_heads {model['enabled_heads']}: the "
                              "heads are listed once now, in model.enabled_heads; remove model.tasks")
        model.setdefault("enabled_heads", tasks)
    for old, new in LEGACY_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        node = data.setdefault("model", {})
        *parents, leaf = new.split(".")[1:]
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**value, **node[leaf]}  # the new place wins
        else:
            node.setdefault(leaf, value)
        for key in [k for k in provenance if k == old or k.startswith(old + ".")]:
            provenance[new + key[len(old):]] = provenance.pop(key)
    return data


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None,
                    chain_overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load a config file: resolve `extends:`, apply overrides (chain-level first), validate."""
    return resolve_experiment(path, overrides, chain_overrides)[0]


def resolve_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None,
                       chain_overrides: Mapping[str, Any] | None = None,
                       chain_source: str = "the chain's set:") -> tuple[ExperimentConfig, Provenance]:
    """Like `load_experiment`, also returning where each key's value came from."""
    data, provenance = load_with_extends(path)
    if chain_overrides:
        apply_overrides(data, chain_overrides, provenance, chain_source)
    if overrides:
        apply_overrides(data, overrides, provenance)
    return validate_experiment(data, provenance), provenance


def dump_yaml(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


_UNION_MEMBER = re.compile(r"^(bool|int|float|str|none|list|dict)$|[\[\-]")  # pydantic's member tags


def _merge_unions(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a Union (`amp: true | "auto" | ...`) fails once per
    member, each under the member's tag (`runtime.amp.bool`, `runtime.amp.literal[...]`):
    one error naming every alternative instead."""
    groups: dict[tuple, list[dict]] = {}
    for err in errors:
        tag = str(err["loc"][-1]) if err["loc"] else ""
        key = (tuple(err["loc"][:-1]), repr(err.get("input"))) if _UNION_MEMBER.search(tag) else (id(err),)
        groups.setdefault(key, []).append(err)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(members[0])
            continue
        alternatives = [_what(m, BaseModel, []).rsplit(", got ", 1)[0] for m in members]
        merged.append({"type": "union", "loc": members[0]["loc"][:-1], "input": members[0].get("input"),
                       "ctx": {"alternatives": alternatives}, "msg": ""})
    return merged


def _describe(err: dict, root: type[BaseModel], provenance: Provenance, where: str = "",
              prefix: str = "") -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = prefix + ".".join(loc)
    what = _what(err, root, loc)
    if not dotted or what.startswith(dotted + "."):  # a section's own check names its keys
        return what + (f" (in {display_path(where)})" if where else "")
    source = source_of(dotted, provenance) or where
    if source and Path(source).is_file():
        source = display_path(source)
    return f"{dotted}: {what}" + (f" (in {source})" if source else "")


def _what(err: dict, root: type[BaseModel], loc: list[str]) -> str:
    """What is wrong with the value, in words (without the key)."""
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "union":
        return f"{'; or '.join(ctx['alternatives'])}, got {value!r}"
    if kind == "extra_forbidden":
        choices = _fields_at(root, loc[:-1])
        what = f"unknown key{did_you_mean(loc[-1], choices)}"
    elif kind == "missing":
        what = "required key is missing"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        what = f"expected a whole number, got {value!r}"
    elif kind in ("float_type", "float_parsing"):
        what = f"expected a number, got {value!r}"
    elif kind in ("bool_type", "bool_parsing"):
        what = f"expected true or false, got {value!r}"
    elif kind in ("string_type",):
        what = f"expected text, got {value!r}"
    elif kind in ("list_type", "dict_type", "model_type", "model_attributes_type"):
        expected = {"list_type": "a list", "dict_type": "a mapping"}.get(kind, "a mapping")
        what = f"expected {expected}, got {value!r}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": "≥",
                "less_than": "<", "less_than_equal": "≤"}[kind]
        bound = next(iter(ctx.values()))
        what = f"must be {sign} {bound}, got {value!r}"
    elif kind == "literal_error":
        expected = ctx.get("expected", "")
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
        what = f"must be one of {expected}, got {value!r}{did_you_mean(value, options)}"
    else:
        what = err["msg"].removeprefix("Value error, ")
    return what


def source_of(dotted: str, provenance: Provenance) -> str:
    parts = dotted.split(".")
    while parts:
        key = ".".join(parts)
        if key in provenance:
            return provenance[key]
        parts.pop()
    return ""


def _fields_at(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model found by walking `loc` from `root` (for did-you-mean)."""
    model: Any = root
    skip = 0  # list indices and dict keys between a field and its model
    for part in loc:
        if skip:
            skip -= 1
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model, skip = _model_in(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_in(annotation: Any) -> tuple[Any, int]:
    """The BaseModel inside an annotation and how many containers wrap it."""
    import typing

    if _is_model(annotation):
        return annotation, 0
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        model, depth = _model_in(arg)
        if model is not None:
            return model, depth + (origin in (list, dict))
    return None, 0
