"""The local model registry: versions, stages, the promotion gate, history, atomic versions,
concurrent adds, and the `recsmith registry` commands end to end on a real (tiny) run."""

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import run_cli
from recsmith.errors import ConfigError, DataError
from recsmith.serve import model_registry
from recsmith.serve.model_registry import ModelRegistry, PromotionRefused, registry_root


# ------------------------------------------------------------ a stand-in bundler
def fake_run(tmp: Path, name: str, test_auc: float, valid_auc: float = 0.7, key: str = "auc_ctcvr") -> Path:
    """A directory the fake bundler turns into a bundle with these metrics."""
    run = tmp / name
    run.mkdir()
    (run / "fake.json").write_text(json.dumps({"primary_key": key, "metrics": {
        "valid": {key: valid_auc}, "test": {key: test_auc}}}))
    return run


def fake_bundler(run_dir: Path, dest: Path) -> dict:
    """Writes the bundle files the way write_bundle does (into `dest`), from the run's fake.json."""
    spec = json.loads((run_dir / "fake.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.pt").write_bytes(b"weights")
    meta = {"run_dir": str(run_dir), "created": "2024-01-01T00:00:00", "config_hash": "abcdef0123456789",
            "family": "ranking", "tasks": ["ctr", "cvr"], **spec}
    (dest / "bundle.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "registry", bundler=fake_bundler)


def registry_bytes(reg: ModelRegistry, name: str) -> bytes:
    return (reg.root / name / "registry.json").read_bytes()


def version_dirs(reg: ModelRegistry, name: str) -> list[str]:
    return sorted(p.name for p in (reg.root / name).iterdir() if p.is_dir())


# ------------------------------------------------------------------ add, resolve
def test_add_list_resolve(registry, tmp_path):
    first = registry.add("ctr", fake_run(tmp_path, "a", 0.71), reason="first try", user="ana")
    second = registry.add("ctr", fake_run(tmp_path, "b", 0.72))
    assert (first.version, first.stage, second.version, second.stage) == (1, "staging", 2, "staging")
    assert first.path == registry.root / "ctr" / "v1" and (first.path / "bundle.json").is_file()
    assert first.metric("test") == 0.71 and first.metric("valid") == 0.7 and first.primary_key == "auc_ctcvr"
    assert [v.version for v in registry.versions("ctr")] == [1, 2]
    assert registry.names() == ["ctr"]
    assert version_dirs(registry, "ctr") == ["v1", "v2"]

    assert registry.resolve("ctr@v1") == first and registry.resolve("ctr@2") == second
    assert registry.resolve("ctr@staging").version == 2  # the newest staging version
    with pytest.raises(ConfigError, match=r"no production version \(versions: v1 staging, v2 staging\)"):
        registry.resolve("ctr")
    registry.promote("ctr", 1, reason="go")
    assert registry.resolve("ctr").version == 1 and registry.resolve("ctr@production").version == 1
    assert registry.resolve("ctr").path == first.path

    event = registry.history("ctr")[0]
    assert event["action"] == "add" and event["who"] == "ana" and event["why"] == "first try"
    assert event["from"] is None and event["to"] == "staging" and event["forced"] is False
    stored = json.loads(registry_bytes(registry, "ctr"))
    assert [v["stage"] for v in stored["versions"]] == ["production", "staging"]
    assert stored["versions"][0]["run_dir"] == str(tmp_path / "a")  # the bundle's metadata is kept


def test_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RECSMITH_REGISTRY", raising=False)
    assert registry_root() == Path("runs") / "registry"
    monkeypatch.setenv("RECSMITH_REGISTRY", str(tmp_path / "elsewhere"))
    assert ModelRegistry().root == tmp_path / "elsewhere"
    assert ModelRegistry(tmp_path / "given").root == tmp_path / "given"


def test_production_directly_only_when_there_is_none(registry, tmp_path):
    assert registry.add("ctr", fake_run(tmp_path, "a", 0.71), stage="production").stage == "production"
    before = registry_bytes(registry, "ctr")
    with pytest.raises(ConfigError, match=r"already has a production version \(v1\)"):
        registry.add("ctr", fake_run(tmp_path, "b", 0.80), stage="production")
    assert registry_bytes(registry, "ctr") == before and version_dirs(registry, "ctr") == ["v1"]


# ------------------------------------------------------------------- the gate
def test_gate_refuses_a_worse_model_unless_forced(registry, tmp_path):
    registry.add("ctr", fake_run(tmp_path, "a", 0.750), stage="production")
    registry.add("ctr", fake_run(tmp_path, "b", 0.740))
    before = registry_bytes(registry, "ctr")
    with pytest.raises(PromotionRefused) as refused:
        registry.promote("ctr", 2, reason="looks fine")
    message = str(refused.value)
    assert message.startswith("promotion refused: ctr v2 stays staging")
    assert "test auc_ctcvr 0.740000 is worse than production v1's 0.750000 by 0.010000" in message
    assert "--force" in message
    assert registry_bytes(registry, "ctr") == before  # nothing changed

    promoted = registry.promote("ctr", "v2", force=True, reason="the new features matter more", user="bo")
    assert promoted.stage == "production"
    assert [v.stage for v in registry.versions("ctr")] == ["archived", "production"]
    promote, archive = registry.history("ctr")[-2:]
    assert promote["action"] == "promote" and promote["version"] == 2
    assert (promote["from"], promote["to"], promote["forced"]) == ("staging", "production", True)
    assert promote["who"] == "bo" and promote["why"] == "the new features matter more" and promote["when"]
    assert promote["candidate_metric"] == 0.74 and promote["production_metric"] == 0.75
    assert promote["production_version"] == 1 and promote["gate"].startswith("overridden: test auc_ctcvr")
    assert (archive["action"], archive["version"], archive["from"], archive["to"]) == \
        ("archive", 1, "production", "archived")
    assert archive["why"] == "replaced by v2"


def test_gate_passes_a_better_model_and_archives_the_old_one(registry, tmp_path, monkeypatch):
    registry.add("ctr", fake_run(tmp_path, "a", 0.750), stage="production")
    registry.add("ctr", fake_run(tmp_path, "b", 0.7495))  # worse, but within the default 0.001
    registry.add("ctr", fake_run(tmp_path, "c", 0.7480))
    assert registry.promote("ctr", 2).stage == "production"
    event = [e for e in registry.history("ctr") if e["action"] == "promote"][-1]
    assert event["gate"] == "passed" and event["forced"] is False and event["tolerance"] == 0.001
    assert [v.stage for v in registry.versions("ctr")] == ["archived", "production", "staging"]
    with pytest.raises(PromotionRefused):
        registry.promote("ctr", 3)  # 0.0015 worse than v2
    monkeypatch.setenv("RECSMITH_PROMOTE_TOLERANCE", "0.002")
    assert registry.promote("ctr", 3).stage == "production"
    assert [v.stage for v in registry.versions("ctr")] == ["archived", "archived", "production"]


def test_an_explicit_tolerance_and_loss_keys_going_down(registry, tmp_path):
    registry.add("m", fake_run(tmp_path, "a", 0.30, key="logloss_ctr"), stage="production")
    registry.add("m", fake_run(tmp_path, "b", 0.35, key="logloss_ctr"))  # higher loss: worse
    registry.add("m", fake_run(tmp_path, "c", 0.25, key="logloss_ctr"))  # lower loss: better
    with pytest.raises(PromotionRefused, match=r"test logloss_ctr 0.350000 is worse .* by 0.050000"):
        registry.promote("m", 2)
    assert registry.promote("m", 2, tolerance=0.06).stage == "production"
    assert registry.promote("m", 3).stage == "production"


def test_a_different_primary_metric_cannot_be_compared(registry, tmp_path):
    registry.add("m", fake_run(tmp_path, "a", 0.7, key="auc_ctr"), stage="production")
    registry.add("m", fake_run(tmp_path, "b", 0.9, key="auc_ctcvr"))
    with pytest.raises(PromotionRefused, match="differs from production v1's auc_ctr"):
        registry.promote("m", 2)


def test_absolute_bars_hold_a_poor_model_back_even_with_no_production_version(registry, tmp_path):
    """The audit's case: a model with test AUC 0.319 reached production because none was there."""
    registry.add("ctr", fake_run(tmp_path, "poor", 0.319))
    with pytest.raises(PromotionRefused, match=r"test auc_ctcvr 0.319000 is below the floor 0.7"):
        registry.promote("ctr", 1, minimums={"auc_ctcvr": 0.7})
    with pytest.raises(PromotionRefused, match="is not added to production: it has no finite test logloss"):
        registry.add("ctr", fake_run(tmp_path, "poor2", 0.319), stage="production", minimums={"logloss": 0.5})
    assert [v.version for v in registry.versions("ctr")] == [1]  # the refused add left nothing
    registry.add("ctr", fake_run(tmp_path, "good", 0.81), stage="production", minimums={"auc_ctcvr": 0.7})
    registry.add("ctr", fake_run(tmp_path, "better", 0.80))  # worse on its own test set, better online
    evidence = {"release": ["no regression at 5%", "non-inferior within 10% at 20%"]}
    promoted = registry.promote("ctr", 3, reason="released", minimums={"auc_ctcvr": 0.7}, evidence=evidence)
    event = next(e for e in reversed(registry.history("ctr")) if e["action"] == "promote")
    assert promoted.stage == "production" and event["gate"] == "evidence" and event["evidence"] == evidence
    assert not event["forced"] and event["minimums"] == {"auc_ctcvr": 0.7}
    registry.add("ctr", fake_run(tmp_path, "poor3", 0.5))
    with pytest.raises(PromotionRefused, match="below the floor"):  # evidence does not lift the bars
        registry.promote("ctr", 4, minimums={"auc_ctcvr": 0.7}, evidence=evidence)


def test_staging_always_and_archive(registry, tmp_path):
    registry.add("ctr", fake_run(tmp_path, "a", 0.75), stage="production")
    registry.add("ctr", fake_run(tmp_path, "b", 0.60))
    registry.archive("ctr", 2, reason="bad data", user="cy")
    assert registry.promote("ctr", 2, to="staging").stage == "staging"  # no gate for staging
    assert registry.archive("ctr", "v1").stage == "archived"
    with pytest.raises(ConfigError, match="no production version"):
        registry.resolve("ctr")
    assert registry.resolve("ctr@v1").stage == "archived"  # archived bundles stay resolvable
    events = [(e["action"], e["version"], e["from"], e["to"]) for e in registry.history("ctr")]
    assert events == [("add", 1, None, "production"), ("add", 2, None, "staging"),
                      ("archive", 2, "staging", "archived"), ("promote", 2, "archived", "staging"),
                      ("archive", 1, "production", "archived")]
    assert registry.history("ctr")[2]["who"] == "cy" and registry.history("ctr")[2]["why"] == "bad data"


# ----------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_error(registry, tmp_path):
    registry.add("ctr", fake_run(tmp_path, "a", 0.75))
    cases = [
        (lambda: registry.resolve("crt"), ConfigError, r"no model 'crt' .*\(models: ctr\) \(did you mean 'ctr'\?\)"),
        (lambda: registry.resolve("ctr@v9"), ConfigError, r"model 'ctr' has no version v9 \(versions: v1\)"),
        (lambda: registry.resolve("ctr@prodution"), ConfigError, r"'prodution' is neither a version .*did you mean 'production'"),
        (lambda: registry.promote("ctr", 1, to="live"), ConfigError, r"unknown stage 'live'"),
        (lambda: registry.promote("ctr", "seven"), ConfigError, r"version 'seven': expected a number"),
        (lambda: registry.archive("ctr", 4), ConfigError, r"no version v4"),
        (lambda: registry.add("ctr", tmp_path / "nowhere"), DataError, r"run dir not found"),
        (lambda: registry.add("ctr", tmp_path / "a", stage="archived"), ConfigError, r"staging or production"),
        (lambda: registry.add("bad/name", tmp_path / "a"), ConfigError, r"model name 'bad/name'"),
        (lambda: registry.promote("ctr", 1, to="staging"), ConfigError, r"already staging"),
    ]
    before = registry_bytes(registry, "ctr")
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()
    assert registry_bytes(registry, "ctr") == before and version_dirs(registry, "ctr") == ["v1"]


# ------------------------------------------------- atomic versions, concurrency
def test_a_failed_bundle_leaves_no_version_and_the_registry_unchanged(registry, tmp_path):
    registry.add("ctr", fake_run(tmp_path, "a", 0.75))
    before = registry_bytes(registry, "ctr")

    def half_then_fail(run_dir: Path, dest: Path) -> dict:
        fake_bundler(run_dir, dest)
        (dest / "bundle.json").unlink()
        raise DataError(f"{run_dir}: no ckpt_best.pt")

    failing = ModelRegistry(registry.root, bundler=half_then_fail)
    with pytest.raises(DataError, match="no ckpt_best.pt"):
        failing.add("ctr", fake_run(tmp_path, "b", 0.8))
    assert registry_bytes(registry, "ctr") == before
    assert sorted(p.name for p in (registry.root / "ctr").iterdir()) == [".lock", "registry.json", "v1"]
    assert registry.add("ctr", tmp_path / "b").version == 2  # the next add is unaffected


def test_a_registry_write_that_fails_removes_the_renamed_version(registry, tmp_path, monkeypatch):
    registry.add("ctr", fake_run(tmp_path, "a", 0.75))
    before = registry_bytes(registry, "ctr")

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_registry, "write_json_atomic", disk_full)
    with pytest.raises(OSError):
        registry.add("ctr", fake_run(tmp_path, "b", 0.8))
    assert registry_bytes(registry, "ctr") == before and version_dirs(registry, "ctr") == ["v1"]


def test_concurrent_adds_get_distinct_versions(registry, tmp_path, monkeypatch):
    real_write = model_registry.write_json_atomic

    def slow_write(path, data):  # widens the read-modify-write window the lock must close
        time.sleep(0.02)
        real_write(path, data)

    monkeypatch.setattr(model_registry, "write_json_atomic", slow_write)
    runs = [fake_run(tmp_path, f"r{i}", 0.7 + i / 1000) for i in range(8)]
    start = threading.Barrier(len(runs))
    results, errors = [], []

    def add(run):
        start.wait()
        try:
            results.append(registry.add("ctr", run))
        except Exception as exc:  # collected: an assertion in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(v.version for v in results) == list(range(1, 9))
    stored = registry.versions("ctr")
    assert [v.version for v in stored] == list(range(1, 9))
    assert sorted(v.metadata["run_dir"] for v in stored) == sorted(map(str, runs))  # none lost
    assert version_dirs(registry, "ctr") == sorted(f"v{n}" for n in range(1, 9))
    for version in stored:  # each dir holds the bundle its entry describes
        assert json.loads((version.path / "bundle.json").read_text())["run_dir"] == version.metadata["run_dir"]


# ------------------------------------------------ a real run, through the CLI
@pytest.fixture(scope="module")
def finished_run(ranking_runs):
    """A tiny trained multi-task run (the real bundler needs its checkpoint and dataset)."""
    return ranking_runs[0]


def test_cli_add_list_promote_on_a_real_run(finished_run, tmp_path):
    from recsmith.cli import app

    root = tmp_path / "registry"
    runner = CliRunner()
    added = runner.invoke(app, ["registry", "add", "funnel", str(finished_run), "--registry", str(root),
                                "--reason", "baseline", "--user", "ana"])
    assert added.exit_code == 0, added.output
    report = json.loads((finished_run / "eval.json").read_text())
    key = report["primary_key"]
    assert f"funnel v1 (staging) · {key}: valid {report['valid'][key]:.6f}, test {report['test'][key]:.6f}" \
        in added.output

    version = ModelRegistry(root).resolve("funnel@staging")
    for name in ("bundle.json", "model.pt", "config.yaml", "schema.json", "features.json", "vocab.json"):
        assert (version.path / name).is_file(), name
    assert version.metric("test") == pytest.approx(report["test"][key])
    assert version.metadata["run_dir"] == str(finished_run.resolve())

    promoted = runner.invoke(app, ["registry", "promote", "funnel", "1", "--registry", str(root)])
    assert promoted.exit_code == 0, promoted.output
    assert "gate: no production version" in promoted.output
    listed = runner.invoke(app, ["registry", "list", "--registry", str(root)], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "funnel" in line)
    for text in ("v1", "production", key, f"{report['test'][key]:.6f}", version.metadata["config_hash"][:8]):
        assert text in row, (text, row)

    # a second, identical model is not worse: the gate passes and v1 is archived
    assert runner.invoke(app, ["registry", "add", "funnel", str(finished_run), "--registry", str(root)]).exit_code == 0
    again = runner.invoke(app, ["registry", "promote", "funnel", "v2", "--registry", str(root), "--reason", "retrained"])
    assert again.exit_code == 0, again.output
    assert "gate: passed" in again.output and "funnel v1 → archived" in again.output
    assert [v.stage for v in ModelRegistry(root).versions("funnel")] == ["archived", "production"]


def test_cli_errors_are_one_line_and_a_non_zero_exit(tmp_path):
    root = tmp_path / "registry"
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    result = run_cli("registry", "add", "funnel", not_a_run, "--registry", root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"data error: not a run directory (no config.yaml): {not_a_run}"]
    assert not (root / "funnel" / "registry.json").exists()


# ------------------------------------------------------------------ MLflow
def test_mlflow_mirror_registers_versions_and_moves_the_aliases(registry, tmp_path, monkeypatch):
    from recsmith.serve.model_registry import MlflowMirror

    # a file store: the default sqlite store needs SQLAlchemy, which mlflow-skinny lacks
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    mirror = MlflowMirror(registry)
    first = registry.add("ctr", fake_run(tmp_path, "a", 0.75), stage="production")
    assert mirror.add(first)["model_version"] == 1
    second = registry.add("ctr", fake_run(tmp_path, "b", 0.76))
    info = mirror.add(second)
    client = mirror.client
    assert int(client.get_model_version_by_alias("ctr", "production").version) == 1
    assert int(client.get_model_version_by_alias("ctr", "staging").version) == 2
    assert "bundle.json" in [Path(a.path).name for a in client.list_artifacts(info["run_id"], "model")]
    assert client.get_run(info["run_id"]).data.metrics["test_auc_ctcvr"] == pytest.approx(0.76)

    registry.promote("ctr", 2)
    mirror.sync("ctr")
    assert int(client.get_model_version_by_alias("ctr", "production").version) == 2
    assert "staging" not in client.get_registered_model("ctr").aliases
    assert client.get_model_version("ctr", "1").tags["stage"] == "archived"
    assert registry.resolve("ctr").metadata["mlflow"]["model_version"] == 2
