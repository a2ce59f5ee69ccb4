"""A local model registry: named models, numbered versions, stages, gated promotion.

    ROOT/                       $RECSMITH_REGISTRY, else runs/registry
      <name>/
        registry.json           versions (bundle metadata + stage) and the append-only history
        .lock                   flock'ed while registry.json is read, changed and replaced
        v1/  v2/ ...            one model bundle each (recsmith.serve.bundle), never changed

A version directory is written under a temporary name and renamed into place while the
lock is held, so it is complete or absent, and two concurrent `add`s get distinct numbers.
Stages: `staging`, `production` (at most one version), `archived`. Promotion to production
is refused when the candidate's test primary metric is worse than production's by more
than the tolerance, unless forced; every stage change records who, when, why and whether
it was forced.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import importlib.util
import json
import math
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from recsmith.atomic import remove_stale, temp_prefix, write_json_atomic
from recsmith.errors import ConfigError, DataError, RecsmithError, did_you_mean
from recsmith.metrics.direction import lower_is_better
from recsmith.serve.bundle import write_bundle

ROOT_ENV = "RECSMITH_REGISTRY"
TOLERANCE_ENV = "RECSMITH_PROMOTE_TOLERANCE"
MLFLOW_ENV = "RECSMITH_REGISTRY_MLFLOW"
DEFAULT_ROOT = Path("runs") / "registry"
DEFAULT_TOLERANCE = 0.001  # absolute, in the primary metric's units (AUC)
STAGES = ("staging", "production", "archived")
REGISTRY_FILE = "registry.json"
INCOMING = "incoming"  # a bundle being copied in is `.incoming.tmp<pid>.<host>.<token>` until registered
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VERSION_PATTERN = re.compile(r"v?(\d+)")

Bundler = Callable[[Path, Path], dict]  # (run dir, new bundle dir) -> bundle.json's content


class PromotionRefused(RecsmithError):
    """The promotion gate said no: the candidate is worse than production."""

    kind = "promotion refused"


class BadModelName(ConfigError):
    """A model name (or the name in a reference) outside NAME_PATTERN: never a path."""


class ReferenceRefused(RecsmithError):
    """A reference that would load a model from outside the registry: a registry.json whose
    version path is not `vN`, or a version directory (or model directory) that is a link
    leading out of the root."""

    kind = "refused"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its bundle directory and its registry.json entry."""

    name: str
    version: int
    stage: str
    path: Path
    metadata: dict = field(hash=False, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def primary_key(self) -> str | None:
        return self.metadata.get("primary_key")

    def metric(self, split: str = "test") -> float | None:
        """The primary metric on `split` (valid or test), None when absent or not finite."""
        return _metric(self.metadata, split, self.primary_key or "")


def registry_root(root: str | Path | None = None) -> Path:
    """`root`, else $RECSMITH_REGISTRY, else runs/registry (relative to the working dir)."""
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def default_tolerance() -> float:
    text = os.environ.get(TOLERANCE_ENV)
    if not text:
        return DEFAULT_TOLERANCE
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"${TOLERANCE_ENV}: expected a number, got '{text}'") from None
    if not value >= 0:
        raise ConfigError(f"${TOLERANCE_ENV}: must be ≥ 0, got {text}")
    return value


def mlflow_by_default() -> bool:
    return os.environ.get(MLFLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class ModelRegistry:
    """The registry under `root` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path | None = None, bundler: Bundler | None = None):
        self.root = registry_root(root)
        self._bundler = bundler or write_bundle

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        """Registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / REGISTRY_FILE).is_file())

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first."""
        return [self._version(name, entry) for entry in self._read(self._model_dir(name))["versions"]]

    def get(self, name: str, version: int | str) -> ModelVersion:
        """Version `version` (3, "3" or "v3") of `name`."""
        number = self._parse_version(version)
        for found in self.versions(name):
            if found.version == number:
                return found
        known = ", ".join(f"v{v.version}" for v in self.versions(name))
        raise ConfigError(f"model '{name}' has no version v{number} (versions: {known or 'none'})")

    def resolve(self, ref: str) -> ModelVersion:
        """`name` (production), `name@production`, `name@staging` (the newest staging version),
        `name@v3` or `name@3`."""
        name, _, selector = ref.partition("@")
        _check_name(name, f"model reference '{ref}'")
        selector = selector or "production"
        if VERSION_PATTERN.fullmatch(selector):
            return self.get(name, selector)
        if selector not in ("production", "staging"):
            raise ConfigError(f"model reference '{ref}': '{selector}' is neither a version (v3) nor "
                              f"production or staging{did_you_mean(selector, ('production', 'staging'))}")
        versions = self.versions(name)
        matching = [v for v in versions if v.stage == selector]
        if not matching:
            stages = ", ".join(f"v{v.version} {v.stage}" for v in versions) or "none"
            raise ConfigError(f"model '{name}' has no {selector} version (versions: {stages}); "
                              f"name one as {name}@vN")
        return matching[-1]

    def history(self, name: str) -> list[dict]:
        """Every stage change of `name`, oldest first."""
        return self._read(self._model_dir(name))["history"]

    # ------------------------------------------------------------------ changing
    def add(self, name: str, run_dir: str | Path, stage: str = "staging", reason: str = "",
            user: str | None = None, minimums: dict[str, float] | None = None) -> ModelVersion:
        """Bundle a finished run as the next version of `name` (created when new). Straight to
        production (only while there is none) it must clear `minimums`, as a promotion does."""
        _check_name(name)
        if stage not in ("staging", "production"):
            raise ConfigError(f"--stage: a new version goes to staging or production, not '{stage}'"
                              f"{did_you_mean(stage, ('staging', 'production'))}")
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise DataError(f"run dir not found: {run_dir}")
        model_dir = self.root / name
        if stage == "production" and (model_dir / REGISTRY_FILE).is_file():
            self._check_no_production(name, self._read(model_dir))  # fail before the copying
        model_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(model_dir / INCOMING, "tmp")  # bundles of adds killed while copying
        incoming = model_dir / f"{temp_prefix(model_dir / INCOMING)}{uuid.uuid4().hex[:12]}"
        try:
            bundle = self._bundler(run_dir, incoming)
            problem = _below_minimums(bundle, minimums or {}) if stage == "production" else None
            if problem is not None:
                raise PromotionRefused(f"{name}: {run_dir} is not added to production: {problem}")
            with self._locked(model_dir):
                state = self._read(model_dir) if (model_dir / REGISTRY_FILE).is_file() else \
                    {"name": name, "versions": [], "history": []}
                if stage == "production":
                    self._check_no_production(name, state)
                number = self._next_number(model_dir, state)
                self._remove_unregistered(model_dir, state)
                entry = {**bundle, "version": number, "stage": stage, "path": f"v{number}",
                         "registered": _now(), "registered_by": user or getpass.getuser()}
                state["versions"].append(entry)
                state["history"].append(self._event("add", number, None, stage, user, reason, False))
                final = model_dir / f"v{number}"
                incoming.rename(final)
                try:
                    write_json_atomic(model_dir / REGISTRY_FILE, state)
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)  # unregistered: as if never added
                    raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return self._version(name, entry)

    def promote(self, name: str, version: int | str, to: str = "production", force: bool = False,
                reason: str = "", user: str | None = None, tolerance: float | None = None,
                minimums: dict[str, float] | None = None, evidence: dict | None = None) -> ModelVersion:
        """Move a version to `to`. To production only through the metric gate (or `force`);
        the version it replaces is archived. `minimums`: absolute floors (ceilings for
        lower-is-better metrics) on the candidate's test metrics, checked whether or not a
        production version exists. `evidence`: a decision taken elsewhere on better grounds
        than two runs' own test sets (the release loop's paired offline gate and online A/B),
        recorded as the gate instead of the test-metric comparison (the minimums still apply)."""
        if to not in STAGES:
            raise ConfigError(f"--to: unknown stage '{to}' (choose from {', '.join(STAGES)})"
                              f"{did_you_mean(to, STAGES)}")
        if to == "archived":
            return self.archive(name, version, reason, user)
        tolerance = default_tolerance() if tolerance is None else tolerance
        if not tolerance >= 0:
            raise ConfigError(f"--tolerance: must be ≥ 0, got {tolerance}")
        number = self._parse_version(version)
        model_dir = self._model_dir(name)
        with self._locked(model_dir):
            state = self._read(model_dir)
            entry = self._entry(name, state, number)
            if entry["stage"] == to:
                raise ConfigError(f"{name} v{number} is already {to}")
            history = []
            if to == "production":
                current = next((e for e in state["versions"] if e["stage"] == "production"), None)
                gate = self._gate(name, entry, current, tolerance, force, minimums or {}, evidence)
                event = self._event("promote", number, entry["stage"], to, user, reason, force)
                event.update(gate)
                history.append(event)
                if current is not None:
                    current["stage"] = "archived"
                    history.append(self._event("archive", current["version"], "production", "archived", user,
                                               f"replaced by v{number}", force))
            else:
                history.append(self._event("promote", number, entry["stage"], to, user, reason, False))
            entry["stage"] = to
            state["history"] += history
            write_json_atomic(model_dir / REGISTRY_FILE, state)
        return self._version(name, entry)

    def archive(self, name: str, version: int | str, reason: str = "", user: str | None = None) -> ModelVersion:
        """Retire a version (its bundle stays on disk and resolvable as name@vN)."""
        number = self._parse_version(version)
        model_dir = self._model_dir(name)
        with self._locked(model_dir):
            state = self._read(model_dir)
            entry = self._entry(name, state, number)
            if entry["stage"] == "archived":
                raise ConfigError(f"{name} v{number} is already archived")
            state["history"].append(self._event("archive", number, entry["stage"], "archived", user, reason, False))
            entry["stage"] = "archived"
            write_json_atomic(model_dir / REGISTRY_FILE, state)
        return self._version(name, entry)

    def set_mlflow(self, name: str, version: int, info: dict) -> None:
        """Record where a version was mirrored in MLflow (run id, model version)."""
        model_dir = self._model_dir(name)
        with self._locked(model_dir):
            state = self._read(model_dir)
            self._entry(name, state, version)["mlflow"] = info
            write_json_atomic(model_dir / REGISTRY_FILE, state)

    # ------------------------------------------------------------------ internals
    def _gate(self, name: str, entry: dict, current: dict | None, tolerance: float, force: bool,
              minimums: dict[str, float], evidence: dict | None) -> dict:
        """The promotion decision recorded in the history; raises PromotionRefused when it is no
        and `force` is off."""
        key = entry.get("primary_key") or ""
        candidate = _metric(entry, "test", key)
        record = {"primary_key": key, "candidate_metric": candidate, "tolerance": tolerance,
                  "production_version": current["version"] if current else None,
                  "production_metric": _metric(current, "test", key) if current else None}
        if minimums:
            record["minimums"] = minimums
        problem = _below_minimums(entry, minimums)
        if problem is None and evidence is not None:
            return {**record, "gate": "evidence", "evidence": evidence}
        if problem is None and current is None:
            return {**record, "gate": "no production version"}
        if problem is None:
            problem = _worse_than_production(entry, current, record, tolerance)
        if problem is None:
            return {**record, "gate": "passed"}
        if not force:
            raise PromotionRefused(f"{name} v{entry['version']} stays {entry['stage']}: {problem}; "
                                   "pass --force to promote it anyway")
        return {**record, "gate": f"overridden: {problem}"}

    @staticmethod
    def _event(action: str, version: int, before: str | None, after: str, user: str | None, reason: str,
               forced: bool) -> dict:
        return {"action": action, "version": version, "from": before, "to": after,
                "who": user or getpass.getuser(), "when": _now(), "why": reason or "", "forced": bool(forced)}

    @staticmethod
    def _check_no_production(name: str, state: dict) -> None:
        current = next((e for e in state["versions"] if e["stage"] == "production"), None)
        if current is not None:
            raise ConfigError(f"{name} already has a production version (v{current['version']}): add to "
                              f"staging, then `recsmith registry promote {name} VERSION` (the metric gate)")

    @staticmethod
    def _remove_unregistered(model_dir: Path, state: dict) -> None:
        """Version dirs that registry.json does not list: an add killed between moving its
        bundle into place and recording it (only adds holding the lock create them)."""
        listed = {entry["path"] for entry in state["versions"]}
        for stray in model_dir.glob("v*"):
            if re.fullmatch(r"v\d+", stray.name) and stray.name not in listed and stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)

    @staticmethod
    def _next_number(model_dir: Path, state: dict) -> int:
        """One past every registered version and every vN dir (a dir left by a crash is not reused)."""
        taken = [e["version"] for e in state["versions"]]
        taken += [int(p.name[1:]) for p in model_dir.iterdir() if re.fullmatch(r"v\d+", p.name)]
        return max(taken, default=0) + 1

    def _model_dir(self, name: str) -> Path:
        _check_name(name)  # one path component under the root, never '..' or '/'
        model_dir = self.root / name
        if not (model_dir / REGISTRY_FILE).is_file():
            names = self.names()
            raise ConfigError(f"no model '{name}' in the registry {self.root} "
                              f"(models: {', '.join(names) or 'none'}){did_you_mean(name, names)}")
        return model_dir

    @staticmethod
    def _entry(name: str, state: dict, number: int) -> dict:
        for entry in state["versions"]:
            if entry["version"] == number:
                return entry
        known = ", ".join(f"v{e['version']}" for e in state["versions"])
        raise ConfigError(f"model '{name}' has no version v{number} (versions: {known or 'none'})")

    @staticmethod
    def _parse_version(version: int | str) -> int:
        if isinstance(version, int) and not isinstance(version, bool):
            return version
        match = VERSION_PATTERN.fullmatch(str(version).strip())
        if not match:
            raise ConfigError(f"version '{version}': expected a number such as 3 or v3")
        return int(match.group(1))

    @staticmethod
    def _read(model_dir: Path) -> dict:
        path = model_dir / REGISTRY_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the registry file ({exc})") from None

    @contextmanager
    def _locked(self, model_dir: Path) -> Iterator[None]:
        """Hold an exclusive lock on the model's registry (processes and threads alike)."""
        with open(model_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _version(self, name: str, entry: dict) -> ModelVersion:
        return ModelVersion(name, entry["version"], entry["stage"], self._bundle_dir(name, entry), entry)

    def _bundle_dir(self, name: str, entry: dict) -> Path:
        """The version's directory, checked: registry.json is a file anyone with write access
        to the root can edit, so its `path` must be a plain `vN` and, links followed, the
        directory must lie under the root."""
        relative = str(entry.get("path", ""))
        path = self.root / name / relative
        inside = os.path.realpath(path).startswith(os.path.realpath(self.root) + os.sep)
        if not re.fullmatch(r"v\d+", relative) or not inside:
            raise ReferenceRefused(f"{name} v{entry.get('version')}: registry.json points outside the registry "
                                   f"({relative!r} under {name}/); refusing to load it")
        return path


def _check_name(name: str, what: str = "") -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise BadModelName(f"{what or f'model name {name!r}'}: a model name uses letters, digits, '.', '_' and "
                           "'-', starting with a letter or digit (references: NAME, NAME@STAGE or NAME@vN)")


def _worse_than_production(entry: dict, current: dict, record: dict, tolerance: float) -> str | None:
    """Why the candidate's test primary metric does not stand comparison with production's."""
    key, candidate, production = record["primary_key"], record["candidate_metric"], record["production_metric"]
    if current.get("primary_key") != key:
        return (f"its primary metric {key or '(none)'} differs from production v{current['version']}'s "
                f"{current.get('primary_key')}, so the two cannot be compared")
    if candidate is None or production is None:
        which = f"v{entry['version']}" if candidate is None else f"production v{current['version']}"
        return f"{which} has no finite test {key}"
    worse_by = candidate - production if lower_is_better(key) else production - candidate
    if worse_by > tolerance:
        return (f"test {key} {candidate:.6f} is worse than production v{current['version']}'s "
                f"{production:.6f} by {worse_by:.6f} (tolerance {tolerance:g})")
    return None


def _below_minimums(entry: dict, minimums: dict[str, float]) -> str | None:
    """What fails the absolute bars: a missing or non-finite metric, or one past its bar."""
    problems = []
    for key, bar in minimums.items():
        value = _metric(entry, "test", key)
        if value is None:
            problems.append(f"it has no finite test {key}")
        elif (value > bar) if lower_is_better(key) else (value < bar):
            side = "above the ceiling" if lower_is_better(key) else "below the floor"
            problems.append(f"test {key} {value:.6f} is {side} {bar:g}")
    return "; ".join(problems) or None


def _metric(entry: dict, split: str, key: str) -> float | None:
    """A version's metric `key` on `split`; None when absent or not finite."""
    value = entry.get("metrics", {}).get(split, {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---------------------------------------------------------------------- MLflow
class MlflowMirror:
    """Mirrors registry versions into MLflow's model registry: the bundle dir is logged as the
    artifact `model` of an MLflow run, registered as a model version, tagged with its stage,
    and the alias `production` / `staging` points at the matching version.

    MLflow's model registry needs a database-backed store: the default is sqlite:///ROOT/mlflow.db,
    which needs SQLAlchemy and Alembic (in the full `mlflow` package, not in `mlflow-skinny`);
    $MLFLOW_TRACKING_URI or `tracking_uri` name another store (a server, or a file: store
    for a local try)."""

    EXPERIMENT = "recsmith-registry"

    def __init__(self, registry: ModelRegistry, tracking_uri: str | None = None):
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError("--mlflow needs MLflow, which is not installed: pip install 'recsmith[tracking]'") \
                from None
        self.registry = registry
        registry.root.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(registry.root / 'mlflow.db').resolve()}"
        if self.uri.startswith("sqlite:") and importlib.util.find_spec("sqlalchemy") is None:
            raise ConfigError(f"--mlflow: the default MLflow store {self.uri} needs SQLAlchemy and Alembic: "
                              "pip install mlflow (or sqlalchemy alembic), or set MLFLOW_TRACKING_URI")
        if self.uri.startswith("file:"):  # MLflow 3 keeps file stores behind this documented opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def add(self, version: ModelVersion) -> dict:
        """Log and register a new version; returns what was recorded in registry.json."""
        from mlflow.exceptions import MlflowException

        client = self.client
        found = client.get_experiment_by_name(self.EXPERIMENT)
        experiment_id = found.experiment_id if found else client.create_experiment(
            self.EXPERIMENT, artifact_location=(self.registry.root / "mlflow-artifacts").resolve().as_uri())
        run = client.create_run(experiment_id, run_name=f"{version.name}-v{version.version}",
                                tags={"recsmith.model": version.name, "recsmith.version": str(version.version),
                                      "recsmith.run_dir": str(version.metadata.get("run_dir", ""))})
        run_id = run.info.run_id
        for split in ("valid", "test"):
            for key, value in version.metadata.get("metrics", {}).get(split, {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    client.log_metric(run_id, f"{split}_{key}", float(value))
        client.log_artifacts(run_id, str(version.path), artifact_path="model")
        client.set_terminated(run_id, "FINISHED")
        try:
            client.get_registered_model(version.name)
        except MlflowException:
            client.create_registered_model(version.name)
        created = client.create_model_version(version.name, f"runs:/{run_id}/model", run_id=run_id,
                                              tags={"recsmith.version": str(version.version)})
        info = {"tracking_uri": self.uri, "run_id": run_id, "model_version": int(created.version)}
        self.registry.set_mlflow(version.name, version.version, info)
        self.sync(version.name)
        return info

    def sync(self, name: str) -> None:
        """Stage tags on every mirrored version; aliases on the production and newest staging one."""
        mirrored = [v for v in self.registry.versions(name) if "mlflow" in v.metadata]
        if not mirrored:
            return
        for version in mirrored:
            self.client.set_model_version_tag(name, str(version.metadata["mlflow"]["model_version"]),
                                              "stage", version.stage)
        for stage in ("production", "staging"):
            holders = [v for v in mirrored if v.stage == stage]
            if holders:
                self.client.set_registered_model_alias(name, stage, holders[-1].metadata["mlflow"]["model_version"])
            elif stage in (self.client.get_registered_model(name).aliases or {}):
                self.client.delete_registered_model_alias(name, stage)
