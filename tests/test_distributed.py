"""Training beyond one process, on PyTorch's own engine: DDP over gloo started by torchrun
(2 ranks × 1 thread on the CPU). A step of the global batch is the same whether one
process, two ranks or two accumulation steps take it, so the runs must agree to 1e-5."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_cli
from test_movielens import ML100K, needs_ml100k

from recsmith.config.loader import validate_experiment
from recsmith.train.run import train_run

pytestmark = pytest.mark.slow
E0A = REPO / "configs" / "experiments" / "mtl_funnel" / "E0a_deepfm_st_ctr.yaml"
E3 = REPO / "configs" / "experiments" / "mtl_funnel" / "E3_deepfm_mmoe_esmm.yaml"
SEQUENTIAL = REPO / "configs" / "base" / "ml100k_sequential.yaml"
FP32 = {"runtime.amp": False}  # bf16 autocast rounds each rank's half batch apart from the whole batch
SASREC = {"data.path": str(ML100K), "model.sequential.dropout": 0.0, "runtime.max_train_steps": 20,
          "runtime.eval_every_steps": 20, "topk.protocol": "sampled",  # one quick evaluation: the suite's time
          "runtime.log_every_steps": 5, "runtime.max_train_seconds": None,
          "runtime.early_stopping_patience": None, **FP32}


def sets(settings: dict) -> list[str]:
    return [f"--set={key}={'null' if value is None else value}" for key, value in settings.items()]


def train(config: Path, run_dir: Path, settings: dict, *extra: str) -> subprocess.CompletedProcess:
    done = run_cli("train", config, "--run-dir", run_dir, *sets(settings), *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def curve(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["type"] in ("train", "valid")]


def assert_same_run(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    ca, cb = curve(a), curve(b)
    assert [s for s, _ in ca] == [s for s, _ in cb]
    assert max(abs(x - y) for (_, x), (_, y) in zip(ca, cb)) <= tolerance, (ca, cb)
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
    assert ea["best_step"] == eb["best_step"]
    for key, value in ea["test"].items():
        assert abs(value - eb["test"][key]) <= tolerance or value != value, key  # NaN stays NaN


def test_two_ranks_equal_one_process_at_the_same_global_batch(tmp_path):
    """E3 (MMoE + ESMM: every head, the auxiliary CVR term over the whole batch's clicks); the
    single-task E0a runs on 2 ranks in TorchRec's tests (test_torchrec.py), the suite's time."""
    settings = {**TINY, **FP32, "runtime.best_selection.primary_key": "auc_ctcvr"}
    train(E3, tmp_path / "one", settings)
    train(E3, tmp_path / "two", settings, "--nproc", "2")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "two" / "env.json").read_text())["world_size"] == 2


@needs_ml100k
def test_two_ranks_equal_one_process_for_sasrec(tmp_path):
    """Dropout off: with it, each rank draws its own masks for its half of the batch."""
    train(SEQUENTIAL, tmp_path / "one", SASREC)
    train(SEQUENTIAL, tmp_path / "two", SASREC, "--nproc", "2")
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_gradient_accumulation_2x512_equals_one_batch_of_1024(tmp_path):
    """ESMM's auxiliary CVR term averages over the clicked rows of the whole batch, not of each half."""
    base = {**TINY, **FP32, "data.batch_size": 1024, "runtime.max_train_steps": 20, "lr_scheduler.total_steps": 20,
            "runtime.eval_every_steps": 10, "optim.clip_grad_norm": 50.0}
    whole = validate_experiment(_config(E3, base))
    halves = validate_experiment(_config(E3, {**base, "optim.grad_accumulation_steps": 2}))
    train_run(whole, tmp_path / "whole")
    train_run(halves, tmp_path / "halves")
    assert_same_run(tmp_path / "whole", tmp_path / "halves")


def _config(path: Path, settings: dict) -> dict:
    from recsmith.config.loader import apply_overrides, load_with_extends

    data, _ = load_with_extends(path)
    apply_overrides(data, settings)
    return data


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path):
    done = run_cli("train", E0A, "--run-dir", tmp_path / "run", *sets({**TINY, "data.batch_size": 255}), "--nproc", "2")
    assert done.returncode != 0 and "data.batch_size 255 does not split into 2 rank(s)" in done.stdout + done.stderr


# ------------------------------------------------------------ several machines
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_rank: int, port: int, run_dir: Path, settings: dict, *extra: str) -> subprocess.Popen:
    """One of two 'machines': torchrun with a c10d rendezvous on 127.0.0.1, one process each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=recsmith-test", "-m", "recsmith", "train", str(E3), "--run-dir", str(run_dir),
               *sets(settings), *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "RECSMITH_NO_PROGRESS": "1"},
                            start_new_session=True)


LONGER = {**TINY, **FP32, "runtime.max_train_steps": 200, "lr_scheduler.total_steps": 200,
          "runtime.eval_every_steps": 50}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """E3 on 2 ranks, 200 steps, never stopped: what the interrupted jobs below must reach."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "one"
    train(E3, run_dir, LONGER, "--nproc", "2")
    return run_dir


def test_a_two_node_job_trains_and_resumes_like_one_process(tmp_path, uninterrupted):
    """Both 'machines' are killed after a checkpoint (a lost job), then the job is started again.
    It must reach the uninterrupted 2-rank run (two processes sum a step's gradient in another
    order than one does, which 200 steps can carry past 1e-5 in a test AUC)."""
    settings = LONGER
    port = free_port()
    nodes = [node(r, port, tmp_path / "two", settings) for r in (0, 1)]
    deadline = time.time() + 240
    while _steps(tmp_path / "two") < 60 or not (tmp_path / "two" / "ckpt_last.pt").exists():
        assert all(n.poll() is None for n in nodes) and time.time() < deadline, [n.poll() for n in nodes]
        time.sleep(0.1)
    for n in nodes:  # every process of the 'machine': torchrun's agent and its worker
        for pid in [n.pid, *_descendants(n.pid)]:
            os.kill(pid, signal.SIGKILL)
        n.wait()
    time.sleep(1.0)  # the orphaned workers' exit is reaped by init
    assert not (tmp_path / "two" / "eval.json").exists()
    port = free_port()
    nodes = [node(r, port, tmp_path / "two", settings, "--resume") for r in (0, 1)]
    outputs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[-2000:] for o in outputs]
    assert "resumed from ckpt_last.pt at step 50" in (tmp_path / "two" / "train.log").read_text()
    assert_same_run(uninterrupted, tmp_path / "two")


def test_kill_9_of_one_rank_ends_the_job_and_resume_matches(tmp_path, uninterrupted):
    settings = LONGER
    job = subprocess.Popen([sys.executable, "-m", "recsmith", "train", str(E3), "--run-dir", str(tmp_path / "two"),
                            *sets(settings), "--nproc", "2"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, "RECSMITH_NO_PROGRESS": "1"},
                           start_new_session=True)
    deadline = time.time() + 240
    while not (tmp_path / "two" / "ckpt_last.pt").exists() or _steps(tmp_path / "two") < 110:
        assert job.poll() is None and time.time() < deadline, job.stdout.read() if job.poll() is not None else ""
        time.sleep(0.1)
    victim = _worker_pids(job.pid)[-1]
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    output = job.communicate(timeout=120)[0]
    ended_in = time.time() - killed
    assert job.returncode != 0 and ended_in < 60, (ended_in, output[-2000:])
    assert "error: the 2-process job stopped" in output and "with --resume to continue" in output
    assert not (tmp_path / "two" / "eval.json").exists()
    resumed = run_cli("train", E3, "--run-dir", tmp_path / "two", *sets(settings), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_same_run(uninterrupted, tmp_path / "two")


def _steps(run_dir: Path) -> int:
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return 0
    return max((r["step"] for r in records if r.get("type") == "train"), default=0)


def _descendants(parent: int) -> list[int]:
    found, queue = [], [parent]
    while queue:
        pid = queue.pop()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        for child in (int(c) for c in children.read_text().split()) if children.exists() else ():
            queue.append(child)
            found.append(child)
    return found


def _worker_pids(parent: int) -> list[int]:
    """The recsmith training processes below `parent` (the launcher → torchrun → workers)."""
    workers = []
    for pid in _descendants(parent):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"recsmith" in cmdline and b"torch.distributed.run" not in cmdline and b"--nproc" not in cmdline:
            workers.append(pid)
    return sorted(workers)


# ------------------------------------------------------------ the tables' sparse gradients
def _mean_sparse_worker(rank: int, init: str, results: str) -> None:
    import torch.distributed as dist

    from recsmith.train.distributed import Distributed, data_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    shape = torch.Size([6, 3])
    grads = {0: torch.sparse_coo_tensor([[1, 4, 1]], torch.arange(9.0).view(3, 3), shape),  # a repeated row
             1: None}  # rank 1 looked nothing up
    mean = Distributed(rank=rank, world_size=2).mean_sparse(grads[rank], shape)
    model = torch.nn.Sequential(torch.nn.Embedding(6, 3, sparse=True), torch.nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.fill_(float(rank))  # rank 0's table must win, as DDP's own parameters do
    net = data_parallel(model, Distributed(rank=rank, world_size=2))
    torch.save({"mean": mean.to_dense(), "ignored": sorted(net.parameters_to_ignore),
                "table": model[0].weight.detach().clone()}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_sparse_gradients_are_averaged_over_ranks_outside_ddp(tmp_path):
    """The tables' sparse gradients skip DDP (gloo's sparse all-reduce corrupted a rank's heap
    under LazyAdam: scripts/repro_gloo_sparse_crash.py) and are averaged with all_gather."""
    import torch.multiprocessing as mp

    init, results = f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "result")
    mp.start_processes(_mean_sparse_worker, args=(init, results), nprocs=2, start_method="spawn")
    expected = torch.zeros(6, 3)
    expected[1] = (torch.tensor([0.0, 1, 2]) + torch.tensor([6.0, 7, 8])) / 2
    expected[4] = torch.tensor([3.0, 4, 5]) / 2
    for rank in (0, 1):
        out = torch.load(f"{results}.{rank}", weights_only=True)
        assert torch.equal(out["mean"], expected)
        assert out["ignored"] == ["0.weight"]
        assert torch.equal(out["table"], torch.zeros(6, 3))
