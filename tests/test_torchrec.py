"""Embedding tables sharded over the ranks by TorchRec (embedding.sharding), 2 ranks × 1
thread over gloo. The shards train with the dense kernel and LazyAdam per shard, so a
sharded step is the replicated step: runs, checkpoints and optimizer moments must agree
to TOLERANCE (the order of floating-point sums differs, nothing else)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_cli
from test_distributed import E0A, E3, FP32, _descendants, _steps, assert_same_run, sets, train

from recsmith.config.loader import validate_experiment
from recsmith.errors import ConfigError
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.distributed import Distributed
from recsmith.train.sharding import INSTALL, shard_tables

TOLERANCE = 1e-5
SETTINGS = {**TINY, **FP32, "runtime.max_train_steps": 120, "lr_scheduler.total_steps": 120,
            "runtime.eval_every_steps": 40, "runtime.best_selection.primary_key": "auc_ctcvr"}


@pytest.fixture(scope="module")
def torchrec():
    """TorchRec and fbgemm, installed here by the project's one command when missing."""
    try:
        return importlib.import_module("torchrec")
    except ImportError:
        done = subprocess.run(["bash", str(REPO / "scripts" / "install_torchrec.sh")], capture_output=True, text=True,
                              cwd=REPO, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"TorchRec is needed to test embedding.sharding and `{INSTALL}` failed:\n{done.stderr[-2000:]}")
        importlib.invalidate_caches()
        return importlib.import_module("torchrec")


@pytest.fixture(scope="module")
def replicated(torchrec, tmp_path_factory):
    """E3 on 2 ranks with the table replicated (DDP): what every sharded run must equal."""
    run_dir = tmp_path_factory.mktemp("replicated") / "run"
    train(E3, run_dir, SETTINGS, "--nproc", "2")
    return run_dir


def checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "ckpt_last.pt")


def assert_plan(run_dir: Path, sharding: str, plan: str) -> None:
    log = (run_dir / "train.log").read_text()
    assert f"embedding table sharded {sharding} over 2 ranks (TorchRec, dense kernel, LazyAdam per shard): {plan}" in log


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """The same weights and the same optimizer moments, the table's LazyAdam state included."""
    ca, cb = checkpoint(a), checkpoint(b)
    assert ca["step"] == cb["step"]
    for name, value in ca["model"].items():
        assert torch.allclose(value, cb["model"][name], atol=TOLERANCE, rtol=0), name
    sa, sb = ca["optimizer"]["sparse"]["state"][0], cb["optimizer"]["sparse"]["state"][0]
    assert int(sa["step"]) == int(sb["step"])
    for moment in ("exp_avg", "exp_avg_sq"):
        assert sa[moment].shape == sb[moment].shape
        assert torch.allclose(sa[moment], sb[moment], atol=TOLERANCE, rtol=0), moment
    # lazy: rows no batch looked up kept zero moments, in both
    untouched = sa["exp_avg_sq"].abs().sum(dim=1) == 0
    assert untouched.any() and torch.equal(untouched, sb["exp_avg_sq"].abs().sum(dim=1) == 0)


@pytest.mark.slow
@pytest.mark.parametrize("sharding, plan", [("table_wise", "13 table(s) table_wise on [0], 13 table(s) table_wise on [1]"),
                                            ("row_wise", "26 table(s) row_wise on [0, 1]")])
def test_a_sharded_e3_run_equals_the_replicated_one(replicated, tmp_path, sharding, plan):
    """column_wise: the killed-and-resumed job below (the suite's time)."""
    run_dir = tmp_path / sharding
    train(E3, run_dir, {**SETTINGS, "embedding.sharding": sharding}, "--nproc", "2")
    assert_plan(run_dir, sharding, plan)
    assert_same_run(replicated, run_dir, TOLERANCE)
    assert_same_checkpoint(replicated, run_dir)


@pytest.mark.slow
def test_auto_lets_the_planner_choose_and_trains_like_the_replicated_run(torchrec, tmp_path):
    settings = {**TINY, **FP32, "runtime.best_selection.primary_key": "auc_ctr"}
    train(E0A, tmp_path / "none", settings, "--nproc", "2")
    done = train(E0A, tmp_path / "auto", {**settings, "embedding.sharding": "auto"}, "--nproc", "2")
    log = (tmp_path / "auto" / "train.log").read_text()
    assert "embedding table sharded auto over 2 ranks" in log and "Traceback" not in done.stderr
    assert "caching params will be ignored" not in done.stdout + done.stderr  # torchrec's per-table noise is quiet
    assert_same_run(tmp_path / "none", tmp_path / "auto", TOLERANCE)


@pytest.mark.slow
def test_a_killed_sharded_job_resumes_and_reaches_the_uninterrupted_run(replicated, tmp_path):
    """Checkpoints hold the fused table and its moments: the resumed job cuts them again, and
    ends where the replicated run does (weights and optimizer moments): column_wise's check."""
    run_dir, settings = tmp_path / "run", {**SETTINGS, "embedding.sharding": "column_wise"}
    job = subprocess.Popen([sys.executable, "-m", "recsmith", "train", str(E3), "--run-dir", str(run_dir),
                            *sets(settings), "--nproc", "2"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, "RECSMITH_NO_PROGRESS": "1"},
                           start_new_session=True)
    deadline = time.time() + 240
    while not (run_dir / "ckpt_last.pt").exists() or _steps(run_dir) < 45:
        assert job.poll() is None and time.time() < deadline, job.stdout.read() if job.poll() is not None else ""
        time.sleep(0.05)
    for pid in [job.pid, *_descendants(job.pid)]:
        os.kill(pid, signal.SIGKILL)
    job.wait()
    assert not (run_dir / "eval.json").exists(), "the job finished before it was killed: make it longer"
    resumed = run_cli("train", E3, "--run-dir", run_dir, *sets(settings), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from ckpt_last.pt at step 40" in (run_dir / "train.log").read_text()
    assert_plan(run_dir, "column_wise", "26 table(s) column_wise on [0, 1]")
    assert_same_run(replicated, run_dir, TOLERANCE)
    assert_same_checkpoint(replicated, run_dir)


# ------------------------------------------------------------ what is refused, in one process
TWO_RANKS = Distributed(rank=0, world_size=2)  # rank 0's view of a 2-rank job (no process group needed here)


def config(**settings):
    from test_distributed import _config

    return validate_experiment(_config(E3, {**TINY, **settings}))


class _Shardable:
    """A model with a table to shard, whose view these checks never reach."""

    def sharded_view(self):
        raise AssertionError("the run should have been refused before its table was cut")


def test_one_process_trains_the_whole_table_and_says_why(caplog):
    cfg = config(**{"embedding.sharding": "table_wise"})
    with caplog.at_level("WARNING", logger="recsmith.train"):
        assert shard_tables(_Shardable(), cfg, Distributed(), torch.device("cpu")) is None
    assert "embedding.sharding: table_wise has no ranks to cut the table over in one process" in caplog.text


def test_a_family_without_a_shardable_table_is_refused():
    cfg = config(**{"embedding.sharding": "column_wise"})
    with pytest.raises(ConfigError, match="has no table TorchRec can shard"):
        shard_tables(object(), cfg, TWO_RANKS, torch.device("cpu"))


def test_clipping_with_a_sharded_table_is_refused():
    cfg = config(**{"embedding.sharding": "column_wise", "optim.clip_grad_norm": 1.0})
    with pytest.raises(ConfigError, match="optim.clip_grad_norm: not supported with embedding.sharding"):
        shard_tables(_Shardable(), cfg, TWO_RANKS, torch.device("cpu"))


def test_without_torchrec_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "recsmith.train.sharded_tables", None)  # an import that fails
    cfg = config(**{"embedding.sharding": "row_wise"})
    with pytest.raises(ConfigError, match="needs TorchRec .*install it with bash scripts/install_torchrec.sh"):
        shard_tables(_Shardable(), cfg, TWO_RANKS, torch.device("cpu"))


def test_an_unknown_sharding_is_a_config_error():
    with pytest.raises(Exception, match="embedding.sharding"):
        config(**{"embedding.sharding": "diagonal"})


def test_torchrecs_fused_cpu_kernels_update_inside_backward_and_offer_no_adam(torchrec):
    """Why the shards use the dense kernel and LazyAdam (docs/distributed.md): fbgemm's fused
    kernels apply their optimizer inside the backward (no gradient is left, so accumulation
    micro-batches and clipping cannot act on a step's gradient), and on the CPU they offer
    exact SGD and Adagrad variants, not Adam. When this fails, fbgemm changed: revisit."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

    def table(optimizer):
        return SplitTableBatchedEmbeddingBagsCodegen([(10, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                                                     optimizer=optimizer, learning_rate=0.1)

    with pytest.raises(AssertionError, match="adam is not supported in CPU mode"):
        table(EmbOptimType.ADAM)
    fused = table(EmbOptimType.EXACT_ROWWISE_ADAGRAD)
    before = fused.split_embedding_weights()[0].clone()
    fused(indices=torch.tensor([1, 3]), offsets=torch.tensor([0, 1, 2])).sum().backward()
    moved = (fused.split_embedding_weights()[0] - before).abs().sum(dim=1) > 0
    assert moved.tolist() == [i in (1, 3) for i in range(10)]  # updated by backward() alone, only the rows looked up
    assert all(p.grad is None for p in fused.parameters())  # and no gradient left for an optimizer step
