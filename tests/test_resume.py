"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow
E3 = REPO / "configs" / "experiments" / "mtl_funnel" / "E3_deepfm_mmoe_esmm.yaml"
# Long enough to be killed between two checkpoints, short enough for CI.
SETTINGS = {**TINY, "runtime.max_train_steps": 300, "lr_scheduler.total_steps": 300,
            "runtime.eval_every_steps": 50, "model.dropout": 0.1}


def sets(settings):
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def train_args(run_dir):
    return ["train", str(E3), "--run-dir", str(run_dir), *sets(SETTINGS)]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = run_cli(*train_args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    broken = tmp_path / "broken"
    child = subprocess.Popen([sys.executable, "-m", "recsmith", *train_args(broken)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not (broken / "ckpt_last.pt").exists() or _last_train_step(broken) < 120:
        assert child.poll() is None, "the run finished before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (broken / "eval.json").exists()

    resumed = run_cli(*train_args(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    log = (broken / "train.log").read_text()
    assert "resumed from ckpt_last.pt at step" in log
    resumed_at = int(log.split("resumed from ckpt_last.pt at step ")[1].split()[0])
    assert 0 < resumed_at < 300

    a, b = (json.loads((d / "eval.json").read_text()) for d in (tmp_path / "whole", broken))
    assert a["best_step"] == b["best_step"]
    for key, value in a["test"].items():
        assert abs(value - b["test"][key]) <= 1e-6, key
    valid = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["type"] == "valid"]
    assert [r["step"] for r in valid(broken)] == [r["step"] for r in valid(tmp_path / "whole")]
    assert all(abs(x["auc_ctcvr"] - y["auc_ctcvr"]) <= 1e-6 for x, y in zip(valid(broken), valid(tmp_path / "whole")))


def _last_train_step(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(l)["step"] for l in path.read_text().splitlines() if '"train"' in l and l.endswith("}")]
    return steps[-1] if steps else 0


def test_run_dir_is_never_overwritten_and_resume_needs_the_same_config(tmp_path):
    run_dir = tmp_path / "run"
    settings = {**SETTINGS, "runtime.max_train_steps": 20, "lr_scheduler.total_steps": 20, "runtime.eval_every_steps": 10}
    first = run_cli("train", E3, "--run-dir", run_dir, *sets(settings))
    assert first.returncode == 0, first.stderr
    before = (run_dir / "eval.json").read_bytes()
    again = run_cli("train", E3, "--run-dir", run_dir, *sets(settings))
    assert again.returncode == 2
    assert again.stderr.strip() == (f"config error: run dir {run_dir} already holds a run: pass --resume, "
                                    "or choose another dir")
    assert (run_dir / "eval.json").read_bytes() == before
    # the finished run resumes to "already complete"; a changed config is refused
    assert run_cli("train", E3, "--run-dir", run_dir, "--resume", *sets(settings)).returncode == 0
    (run_dir / "eval.json").unlink()
    changed = run_cli("train", E3, "--run-dir", run_dir, "--resume", *sets({**settings, "runtime.seed": 1}))
    assert changed.returncode == 2 and "config differs" in changed.stderr
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["runtime"]["seed"] == 20260127
