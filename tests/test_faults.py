"""Runs that survive any kill: a process killed with SIGKILL half way through a checkpoint,
a chain summary, a registry add or an export; a read-only directory; a full disk. After
each, the previous file is intact or the new one complete, and the next command works (or
says in one line what to do).

A kill "half way through a write" is made deterministic by a small wrapper around the CLI
(FAULT below): it patches `os.replace`, the commit point of every atomic write, so that at
the Nth write of one file name the temp file is cut to half its size and the process then
SIGKILLs itself (or gets ENOSPC, a full disk). Production code has no hook for it. Real
full disks and read-only directories are small tmpfs mounts where the tests may mount
(root; a read-only directory is a chmod for other users).
Functions new in this version are imported inside the tests, so each test can also be run
against the code from before (PYTHONPATH=<old checkout>/src) and fail on its own.
"""

import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BASE_CONFIG, REPO, TINY, raw_synthetic_rows, run_cli, tiny_chain_file

FAULT = r"""
import errno, os, signal, sys
from pathlib import Path

target, nth, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real_replace, seen = os.replace, []

def replace(src, dst, *args, **kwargs):
    if Path(dst).name == target:
        seen.append(dst)
        if len(seen) == nth:  # half of the new file written when the fault strikes
            os.truncate(src, os.path.getsize(src) // 2)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
sys.argv = ["recsmith", *sys.argv[4:]]
from recsmith.cli import main
main()
"""
TRAIN_SETTINGS = {**TINY, "runtime.amp": False}  # checkpoints at steps 20 and 40


def run_with_fault(target: str, nth: int, fault: str, *args) -> subprocess.CompletedProcess:
    """`recsmith ARGS` whose `nth` atomic write of a file named `target` is killed half way
    (fault "kill") or fails with a full disk (fault "enospc")."""
    return subprocess.run([sys.executable, "-c", FAULT, target, str(nth), fault, *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def train_args(run_dir: Path, *extra) -> list:
    sets = [a for k, v in TRAIN_SETTINGS.items() for a in ("--set", f"{k}={v}")]
    return ["train", BASE_CONFIG, "--run-dir", run_dir, *sets, *extra]


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def one_line_error(done: subprocess.CompletedProcess, prefix: str) -> str:
    """The single stderr line of a command that failed cleanly (exit 2, no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def tracker_rows(path: Path) -> list[dict]:
    from recsmith.experiments.tracker import read_rows

    return read_rows(path)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())["test"]


@contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (needs root; the test is skipped where it cannot mount)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# ------------------------------------------------------------------ atomic writes
def test_a_write_removes_the_temp_files_of_dead_writers_and_keeps_live_ones(tmp_path):
    from recsmith.atomic import HOST, temp_prefix, write_text_atomic

    target = tmp_path / "summary.csv"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".summary.csv.tmp{dead.pid}",  # the format of earlier versions
                 tmp_path / f".summary.csv.tmp{dead.pid}.{HOST}.0a1b2c3d"]
        kept = [tmp_path / f".summary.csv.tmp{live.pid}.{HOST}.0a1b2c3d",  # a live writer's
                tmp_path / (temp_prefix(target) + "feedbeef"),  # another thread of this process
                tmp_path / f".summary.csv.tmp{dead.pid}.otherhost.0a1b2c3d",  # pids of another host mean nothing here
                tmp_path / f".other.csv.tmp{dead.pid}"]  # another file's
        for path in stale + kept:
            path.write_text("half a file")
        write_text_atomic(target, "new\n")
    finally:
        live.kill()
        live.wait()
    assert target.read_text() == "new\n"
    assert temp_files(tmp_path) == sorted(p.name for p in kept)


def test_a_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    import stat

    from recsmith.atomic import write_text_atomic

    target, synced = tmp_path / "eval.json", []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(
        "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: synced.append("rename") or real_replace(src, dst))
    write_text_atomic(target, "{}\n")
    assert synced == ["file", "rename", "dir"]


def test_a_full_disk_is_one_error_naming_the_file_and_the_previous_content_stays(tmp_path, monkeypatch):
    from recsmith.atomic import write_text_atomic
    from recsmith.errors import WriteError

    target = tmp_path / "summary.json"
    target.write_text("previous\n")

    def write_half_then_fail(self, data, **kwargs):
        with open(self, "w") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(WriteError) as caught:
        write_text_atomic(target, "x" * 1000)
    assert str(caught.value) == (f"write error: cannot write {target}: No space left on device; the disk is full: "
                                 "free space there (or write elsewhere) and run the command again (summary.json "
                                 "keeps its previous content)")
    assert isinstance(caught.value, OSError)  # callers that tolerate a failed write still do
    assert target.read_text() == "previous\n" and temp_files(tmp_path) == []


# ------------------------------------------------------------------ checkpoints and --resume
@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """A tiny run trained without interruption (what every resumed run must match)."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    done = run_cli(*train_args(run_dir))
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The same run, SIGKILLed half way through writing its second ckpt_last.pt (step 40)."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    done = run_with_fault("ckpt_last.pt", 2, "kill", *train_args(run_dir))
    assert done.returncode == -signal.SIGKILL, done.stderr
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_matches(killed_run, whole_run, tmp_path):
    run_dir = copy_run(killed_run, tmp_path)
    assert torch.load(run_dir / "ckpt_last.pt", weights_only=True)["step"] == 20  # the previous one, intact
    [half] = [name for name in temp_files(run_dir) if name.startswith(".ckpt_last.pt.tmp")]
    assert 0 < (run_dir / half).stat().st_size < (run_dir / "ckpt_last.pt").stat().st_size
    assert not (run_dir / "eval.json").exists()

    resumed = run_cli(*train_args(run_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from ckpt_last.pt at step 20" in (run_dir / "train.log").read_text()
    assert temp_files(run_dir) == []  # the killed writer's half file is gone
    assert metrics_of(run_dir) == metrics_of(whole_run)


@pytest.mark.slow
def test_a_truncated_ckpt_last_is_named_and_resume_falls_back_to_ckpt_best(killed_run, whole_run, tmp_path):
    run_dir = copy_run(killed_run, tmp_path)
    last = run_dir / "ckpt_last.pt"
    size = last.stat().st_size
    os.truncate(last, size // 2)  # a copy that did not finish, a disk that lost the end
    best_step = torch.load(run_dir / "ckpt_best.pt", weights_only=True)["step"]

    resumed = run_cli(*train_args(run_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    for text in (resumed.stdout, (run_dir / "train.log").read_text()):  # the console and the log
        assert (f"{last} is unreadable: truncated or damaged ({size // 2:,} bytes; PytorchStreamReader failed "
                "reading zip archive: failed finding central directory); resuming from the next newest "
                "checkpoint") in text
        assert f"resumed from ckpt_best.pt at step {best_step}" in text
    assert metrics_of(run_dir) == metrics_of(whole_run)  # ckpt_best holds the whole training state


@pytest.mark.slow
def test_resume_without_a_readable_checkpoint_says_so_in_one_line(killed_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSMITH_TRACKER", str(tmp_path / "tracker.csv"))
    run_dir = copy_run(killed_run, tmp_path)
    (run_dir / "ckpt_last.pt").write_bytes(b"")
    (run_dir / "ckpt_best.pt").write_bytes(b"not a checkpoint")
    failed = run_cli(*train_args(run_dir, "--resume"))
    assert one_line_error(failed, "data error: ") == (
        f"data error: no readable checkpoint in {run_dir} to resume from (ckpt_last.pt: the file is empty; "
        "ckpt_best.pt: not a PyTorch checkpoint (16 bytes without a zip header)): start a new run dir, or delete "
        "them to train this one from the start")
    assert not (tmp_path / "tracker.csv").exists()


@pytest.mark.slow
def test_resume_of_a_finished_run_never_mixes_two_configs(whole_run, tmp_path, monkeypatch):
    tracker = tmp_path / "tracker.csv"
    monkeypatch.setenv("RECSMITH_TRACKER", str(tracker))
    run_dir = copy_run(whole_run, tmp_path)
    before = {name: (run_dir / name).read_bytes() for name in ("eval.json", "config.yaml", "train.log")}

    changed = run_cli(*train_args(run_dir, "--resume", "--set", "runtime.seed=7", "--set", "optim.dense.lr=0.002"))
    assert one_line_error(changed, "config error: ") == (
        f"config error: run {run_dir} is complete, and the config differs from the one it was trained with "
        "(optim.dense.lr: 0.0006 → 0.002, runtime.seed: 20260127 → 7); nothing was written: train this config in "
        "a new run dir")
    same = run_cli(*train_args(run_dir, "--resume"))
    assert same.returncode == 0, same.stderr
    assert f"run {run_dir} is already complete (same config): nothing to train" in same.stdout
    # neither wrote a tracker row (the run's own row, written when it finished, stands) nor touched the run
    assert tracker_rows(tracker) == []
    assert {name: (run_dir / name).read_bytes() for name in before} == before


@pytest.mark.slow
def test_a_simulated_full_disk_during_a_checkpoint_write_keeps_the_previous_one(whole_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSMITH_TRACKER", str(tmp_path / "tracker.csv"))
    run_dir = tmp_path / "run"
    full = run_with_fault("ckpt_last.pt", 2, "enospc", *train_args(run_dir))
    assert one_line_error(full, "write error: ") == (
        f"write error: cannot write {run_dir / 'ckpt_last.pt'}: No space left on device; the disk is full: free "
        "space there (or write elsewhere) and run the command again (ckpt_last.pt keeps its previous content)")
    assert torch.load(run_dir / "ckpt_last.pt", weights_only=True)["step"] == 20 and temp_files(run_dir) == []
    assert [r["status"] for r in tracker_rows(tmp_path / "tracker.csv")] == ["failed"]

    resumed = run_cli(*train_args(run_dir, "--resume"))  # space freed: the run continues
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_of(run_dir) == metrics_of(whole_run)


@pytest.mark.slow
def test_a_real_full_disk_during_training_stops_cleanly_and_resume_continues(whole_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSMITH_TRACKER", str(tmp_path / "tracker.csv"))
    checkpoint = (whole_run / "ckpt_best.pt").stat().st_size
    with tmpfs(tmp_path / "disk", str(checkpoint * 3 // 2)) as disk:  # room for one checkpoint, not two
        run_dir = disk / "run"
        full = run_cli(*train_args(run_dir))
        assert one_line_error(full, "write error: ") == (
            f"write error: cannot write {run_dir / 'ckpt_last.pt'}: No space left on device; the disk is full: free "
            "space there (or write elsewhere) and run the command again (ckpt_last.pt was not written)")
        assert torch.load(run_dir / "ckpt_best.pt", weights_only=True)["step"] == 20 and temp_files(run_dir) == []
        subprocess.run(["mount", "-o", f"remount,size={checkpoint * 4}", str(disk)], check=True)  # space freed
        resumed = run_cli(*train_args(run_dir, "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        assert "resumed from ckpt_best.pt at step 20" in resumed.stdout
        assert metrics_of(run_dir) == metrics_of(whole_run)


# ------------------------------------------------------------------ chain summary
def finished_copy(run: Path, dest: Path) -> None:
    """A finished run's files a summary reads (its checkpoints are not needed)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.pt"))


def statuses(summary_csv) -> dict[str, str]:
    """exp_id -> status of E3 and E4 in a summary.csv (a path or bytes)."""
    text = summary_csv.read_text() if isinstance(summary_csv, Path) else summary_csv.read().decode()
    return {r["exp_id"]: r["status"] for r in csv.DictReader(io.StringIO(text)) if r["exp_id"] in ("E3", "E4")}


@pytest.mark.slow
def test_a_kill_during_a_summary_write_leaves_each_file_old_or_new_and_summarize_repairs(ranking_runs, tmp_path):
    chain = tiny_chain_file(tmp_path)
    out = tmp_path / "out"
    finished_copy(ranking_runs[0], out / "E3")
    assert run_cli("chain", "summarize", chain).returncode == 0
    old = {name: (out / name).read_bytes() for name in ("summary.csv", "summary.json", "delta_analysis.txt")}
    finished_copy(ranking_runs[1], out / "E4")  # E4 finished since: the summary changes

    killed = run_with_fault("summary.json", 1, "kill", "chain", "summarize", chain)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert statuses(out / "summary.csv") == {"E3": "success", "E4": "success"}  # the new one, whole
    assert statuses(io.BytesIO(old["summary.csv"])) == {"E3": "success", "E4": "not_run"}
    assert (out / "summary.json").read_bytes() == old["summary.json"]  # the old one, intact
    assert (out / "delta_analysis.txt").read_bytes() == old["delta_analysis.txt"]
    assert [n for n in temp_files(out) if n.startswith(".summary.json.tmp")]

    again = run_cli("chain", "summarize", chain)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())["experiments"]
    assert {r["exp_id"]: r["status"] for r in summary if r["exp_id"] in ("E3", "E4")} == \
        {"E3": "success", "E4": "success"}
    assert temp_files(out) == []


# ------------------------------------------------------------------ registry add
@pytest.mark.slow
def test_a_kill_during_a_registry_add_keeps_the_registry_and_the_next_add_works(ranking_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSMITH_REGISTRY", str(tmp_path / "registry"))
    model_dir = tmp_path / "registry" / "ctr"
    from recsmith.serve.model_registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    assert run_cli("registry", "add", "ctr", ranking_runs[0]).returncode == 0
    before = (model_dir / "registry.json").read_bytes()

    for target in ("model.pt", "registry.json"):  # while bundling, and while registering the bundle
        killed = run_with_fault(target, 1, "kill", "registry", "add", "ctr", ranking_runs[1])
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert (model_dir / "registry.json").read_bytes() == before
        assert [v.version for v in registry.versions("ctr")] == [1]
        assert run_cli("registry", "list", "ctr").returncode == 0

    added = run_cli("registry", "add", "ctr", ranking_runs[1])
    assert added.returncode == 0, added.stderr
    versions = registry.versions("ctr")
    # the version dir the second kill left unregistered is skipped, never reused
    assert [v.version for v in versions] == [1, 3]
    assert json.loads((versions[1].path / "bundle.json").read_text())["run_dir"] == str(ranking_runs[1].resolve())
    assert [n for n in temp_files(model_dir) if n.startswith(".registry.json")] == []
    # and the next add cleared what the killed ones left: the half-copied bundle, the unregistered v2
    assert not (model_dir / "v2").exists() and not [n for n in temp_files(model_dir) if "incoming" in n]


# ------------------------------------------------------------------ export
def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "eval.json").read_text())["dataset"])


@pytest.mark.slow
def test_a_kill_during_an_export_leaves_no_bundle_and_the_next_export_works(ranking_runs, tmp_path):
    out = tmp_path / "bundle"
    args = ("export", ranking_runs[0], "--format", "torchscript", "--parity-rows", "200", "--out", out)
    killed = run_with_fault("export.json", 1, "kill", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and len(temp_files(tmp_path)) == 1  # the killed export's staging dir

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "export.json").read_text())
    assert report["parity_rows"] == 200 and (out / report["file"]).is_file() and (out / "bundle.json").is_file()
    assert temp_files(tmp_path) == []


def test_an_export_finishing_second_to_the_same_out_is_refused_and_the_first_stays_whole(ranking_runs, tmp_path,
                                                                                          monkeypatch):
    from recsmith.errors import ConfigError
    from recsmith.serve import export
    from recsmith.serve.scorer import Scorer

    out, real_write, second = tmp_path / "bundle", export.write_json_atomic, {}

    def another_export_finishes_meanwhile(path, data):
        # this export has staged all but export.json when a second one to the same --out runs through
        monkeypatch.setattr(export, "write_json_atomic", real_write)
        second.update(export.export_run(ranking_runs[1], "torchscript", out, parity_rows=100))
        real_write(path, data)

    monkeypatch.setattr(export, "write_json_atomic", another_export_finishes_meanwhile)
    with pytest.raises(ConfigError, match=rf"--out: {out} was filled while this export ran \(another export to the "
                                          r"same --out finished first\); it holds that export's complete bundle"):
        export.export_run(ranking_runs[0], "torchscript", out, parity_rows=200)
    assert json.loads((out / "bundle.json").read_text())["run_dir"] == str(ranking_runs[1].resolve())
    assert json.loads((out / "export.json").read_text())["parity_rows"] == 100 == second["parity_rows"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bundle.json", "config.yaml", "eval.json", "export.json", "features.json", "model.pt", "model.ts.pt",
         "schema.json", "vocab.json"])
    Scorer.load(out)
    assert temp_files(tmp_path) == []  # neither staging dir is left


@pytest.mark.slow
def test_two_concurrent_exports_to_one_out_end_with_one_bundle_and_one_clear_error(ranking_runs, tmp_path):
    out = tmp_path / "bundle"
    children = [subprocess.Popen([sys.executable, "-m", "recsmith", "export", str(run), "--format", "torchscript",
                                  "--parity-rows", "200", "--out", str(out)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=REPO) for run in ranking_runs]
    results = [(child.wait(timeout=600), *child.communicate()) for child in children]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    [(_, _, error)] = [r for r in results if r[0] == 2]
    assert error.strip().startswith(f"config error: --out: {out} ") and len(error.strip().splitlines()) == 1
    [(_, winner, _)] = [r for r in results if r[0] == 0]
    meta = json.loads((out / "bundle.json").read_text())
    assert f"seed{1 if meta['run_dir'].endswith('seed1') else 2}" in meta["run_dir"]
    assert json.loads((out / "export.json").read_text())["parity_rows"] == 200 and "wrote" in winner
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------ predict: bad CSV, read-only and full dirs
@pytest.mark.slow
def test_predict_names_the_file_rows_and_column_of_a_late_csv_type_change(ranking_runs, tmp_path):
    rows = raw_synthetic_rows(dataset_of(ranking_runs[0]))
    many = pa.concat_tables([rows] * (60_000 // rows.num_rows + 1)).slice(0, 60_000)
    source = tmp_path / "requests.csv"
    pacsv.write_csv(many, source)  # the reader infers 'hour' as int64 from the first rows ...
    late = many.slice(0, 1).set_column(many.schema.get_field_index("hour"), "hour", pa.array(["late"]))
    with open(source, "ab") as handle:  # ... and row 60,001 holds a string
        pacsv.write_csv(late, handle, pacsv.WriteOptions(include_header=False))
        pacsv.write_csv(many.slice(0, 10), handle, pacsv.WriteOptions(include_header=False))
    output = tmp_path / "scored.parquet"
    output.write_bytes(b"previous results")

    failed = run_cli("predict", ranking_runs[0], "--input", source, "--output", output)
    assert one_line_error(failed, "data error: ") == (
        f"data error: {source}: column 'hour' is int64 in rows 1..60,000 but row 60,001 (line 60,002) holds 'late'; "
        "give the column one type throughout (or write the file as Parquet)")
    assert output.read_bytes() == b"previous results" and temp_files(tmp_path) == []


@pytest.fixture
def read_only_dir(tmp_path):
    """(directory, seal): fill the directory, then seal() makes it read-only: chmod for a
    normal user; root ignores permission bits, so for root a tmpfs remounted read-only."""
    directory = tmp_path / "read-only"
    if os.geteuid() != 0:
        directory.mkdir()
        yield directory, lambda: directory.chmod(0o555)
        directory.chmod(0o755)
        return
    with tmpfs(directory, "1m"):
        yield directory, lambda: subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)


@pytest.mark.slow
def test_predict_into_a_read_only_dir_says_so_and_keeps_the_previous_output(ranking_runs, tmp_path, read_only_dir):
    directory, seal = read_only_dir
    pq.write_table(raw_synthetic_rows(dataset_of(ranking_runs[0])), tmp_path / "in.parquet")
    output = directory / "scored.parquet"
    output.write_bytes(b"previous results")
    seal()
    failed = run_cli("predict", ranking_runs[0], "--input", tmp_path / "in.parquet", "--output", output)
    line = one_line_error(failed, f"write error: cannot write {output}: ")
    reason = ("Permission denied; the directory is not writable for this user: fix its permissions or write elsewhere"
              if os.geteuid() else "Read-only file system; the file system is read-only: write elsewhere")
    assert line == f"write error: cannot write {output}: {reason} (scored.parquet keeps its previous content)"
    assert output.read_bytes() == b"previous results" and os.listdir(directory) == ["scored.parquet"]
    elsewhere = run_cli("predict", ranking_runs[0], "--input", tmp_path / "in.parquet", "--output",
                        tmp_path / "scored.parquet")
    assert elsewhere.returncode == 0, elsewhere.stderr


@pytest.mark.slow
def test_predict_onto_a_full_disk_says_so_and_keeps_the_previous_output(ranking_runs, tmp_path):
    pq.write_table(raw_synthetic_rows(dataset_of(ranking_runs[0])), tmp_path / "in.parquet")
    with tmpfs(tmp_path / "full", "64k") as directory:
        output = directory / "scored.parquet"
        output.write_bytes(b"previous results")
        failed = run_cli("predict", ranking_runs[0], "--input", tmp_path / "in.parquet", "--output", output)
        assert one_line_error(failed, "write error: ") == (
            f"write error: cannot write {output}: No space left on device; the disk is full: free space there (or "
            "write elsewhere) and run the command again (scored.parquet keeps its previous content)")
        assert output.read_bytes() == b"previous results" and os.listdir(directory) == ["scored.parquet"]
