import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAIN = REPO / "configs" / "chains" / "mtl_funnel.yaml"

# Small enough to train in a few seconds, large enough for every AUC to have both classes.
TINY = {
    "data.synthetic.rows": 30000,
    "data.synthetic.click_rate": 0.2,
    "data.synthetic.conversion_rate": 0.3,
    "data.batch_size": 256,
    "data.eval_batch_size": 4096,
    "runtime.max_train_steps": 40,
    "lr_scheduler.total_steps": 40,
    "lr_scheduler.warmup_steps": 5,
    "runtime.eval_every_steps": 20,
    "runtime.log_every_steps": 10,
}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache, never the user's."""
    cache = tmp_path_factory.mktemp("recsmith-cache")
    os.environ["RECSMITH_CACHE"] = str(cache)
    os.environ["RECSMITH_NO_PROGRESS"] = "1"
    os.environ["RECSMITH_TRACKER"] = str(cache / "experiment_tracker.csv")  # never the repo's runs/
    return cache


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`recsmith ARGS` in a fresh process, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "recsmith", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tiny_chain_file(tmp_path: Path, extra_set: dict | None = None, name: str = "tiny") -> Path:
    """A chain that extends the shipped quick chain, shrunk to seconds per experiment."""
    import yaml

    settings = {**TINY, **(extra_set or {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"extends": str(CHAIN), "name": name,
                                    "output_dir": str(tmp_path / "out"), "set": settings}))
    return path


def tiny_experiment(**overrides) -> dict:
    """A merged config dict for one tiny experiment (multi-task, ESMM off)."""
    from recsmith.config.loader import apply_overrides

    data = {"name": "tiny", "runtime": {"best_selection": {"primary_key": "auc_ctr"}}}
    apply_overrides(data, TINY)
    apply_overrides(data, overrides)
    return data


# ------------------------------------------------------------------------ Redis
_redis: dict = {}


def _apt_install(package: str) -> None:
    """Debian's package, installed when the tests run as root (as CI does)."""
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                       env=env, capture_output=True, timeout=900)


def redis_url() -> str:
    """redis://127.0.0.1:PORT/0 of a redis-server this test session started (Debian's
    `redis-server`, installed here when missing; no persistence), stopped at exit."""
    if "url" in _redis:
        return _redis["url"]
    import atexit
    import socket
    import time

    server = shutil.which("redis-server")
    if not server:
        _apt_install("redis-server")
        server = shutil.which("redis-server")
    if not server:
        pytest.fail("the Redis online-store tests need redis-server: apt-get install redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(process.terminate)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
    _redis["url"] = f"redis://127.0.0.1:{port}/0"
    return _redis["url"]


# ------------------------------------------------------------ headless Chromium
def chromium() -> str:
    """Debian's chromium, installed here when missing (the test set-up the report needs)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    _apt_install("chromium")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("headless Chromium is needed to check report.html: apt-get install chromium")
    return found


def open_in_chromium(page, screenshot=None) -> tuple[str, str]:
    """(DOM after load, browser log) of a file in headless Chromium."""
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--window-size=1400,3000"]
    if screenshot:
        command.append(f"--screenshot={screenshot}")
    else:
        command.append("--dump-dom")
    done = subprocess.run(command + [page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


# ------------------------------------------------------------ finished ranking runs
BASE_CONFIG = REPO / "configs" / "base" / "mtl_funnel.yaml"


# The precision each of the two runs below trains in, forced, so the suite covers both paths
# on every machine (with or without native bf16): what `runtime.amp: auto` would pick differs.
RUN_PRECISIONS = ("bf16", False)


@pytest.fixture(scope="session")
def ranking_runs(tmp_path_factory, isolated_cache):
    """Two tiny finished ranking runs (ctr + cvr heads) on the same synthetic data, differing
    in their seed and training precision (bf16 autocast, fp32): what serving, export and
    registry tests ship and swap."""
    from recsmith.config.loader import load_experiment
    from recsmith.train.run import train_run

    root = tmp_path_factory.mktemp("ranking-runs")
    runs = []
    for seed, amp in zip((1, 2), RUN_PRECISIONS):
        cfg = load_experiment(BASE_CONFIG, {**TINY, "runtime.seed": seed, "runtime.amp": amp,
                                            "name": f"tiny_seed{seed}"})
        train_run(cfg, root / f"seed{seed}")
        runs.append(root / f"seed{seed}")
    return runs


def raw_synthetic_rows(dataset_dir: Path, split: str = "test") -> "pyarrow.Table":  # noqa: F821
    """A split of the synthetic funnel as raw rows, the way a log carries them: ids as drawn
    (the stored id − 1; 0 stored = missing → null), dense values as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsmith.data.synthetic import DENSE, FIELDS

    table = pq.read_table(dataset_dir / f"{split}.parquet")
    columns = {}
    for spec in FIELDS:
        stored = table[spec.name]
        columns[spec.name] = pc.if_else(pc.equal(stored, 0), pa.scalar(None, pa.int32()), pc.subtract(stored, 1))
    columns.update({name: table[name] for name in DENSE})
    return pa.table(columns)
