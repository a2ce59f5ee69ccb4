"""What a run ran on: versions, git commit, hardware (written to env.json)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import recsmith


def busy_cpu_seconds() -> float | None:
    """CPU time all processes have spent not idle since boot, summed over cores (Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _git(*args: str) -> str | None:
    source = Path(recsmith.__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device=None, precision: str | None = None) -> dict:
    import numpy
    import pyarrow
    import torch

    status = _git("status", "--porcelain")
    info = {
        "recsmith": recsmith.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "device": str(device) if device is not None else None,
        "precision": precision,
        "argv": sys.argv,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
