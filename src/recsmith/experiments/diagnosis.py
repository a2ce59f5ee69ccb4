"""Recognise why a run failed from its output, and say how to fix it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailurePattern:
    name: str
    regex: re.Pattern
    hint: str


PATTERNS = (
    FailurePattern("config error", re.compile(r"^(config|chain) error:|ConfigError", re.M),
                   "fix the key the message names; `recsmith chain validate CHAIN` checks every "
                   "experiment without training"),
    FailurePattern("missing or malformed data", re.compile(r"^data error:|FileNotFoundError|No such file or directory", re.M),
                   "check data.path (or RECSMITH_CACHE for generated data); "
                   "`recsmith data prepare CONFIG` prepares a dataset on its own"),
    FailurePattern("out of memory", re.compile(
        r"out of memory|OutOfMemoryError|MemoryError|Cannot allocate memory|bad_alloc|DefaultCPUAllocator", re.I),
                   "lower data.batch_size or data.eval_batch_size, or data.synthetic.rows; "
                   "on a GPU keep runtime.amp on"),
    FailurePattern("NaN loss", re.compile(r"loss is (nan|inf|-inf)|non-finite|\bNaN\b", re.I),
                   "training diverged: lower optim.dense.lr / optim.sparse.lr, raise "
                   "lr_scheduler.warmup_steps, or set runtime.amp false; check dense inputs for NaN"),
    FailurePattern("shape mismatch", re.compile(
        r"size mismatch|shapes cannot be multiplied|must match the size|Expected .* dimensions|"
        r"Error\(s\) in loading state_dict|index out of range", re.I),
                   "the model no longer matches its checkpoint or dataset: start a fresh run dir "
                   "(no --resume) or prepare the dataset again"),
)
KILLED_HINT = ("the process was killed (SIGKILL): on Linux this is usually the out-of-memory killer; "
               "lower data.batch_size or data.synthetic.rows")


def recognise(text: str, returncode: int | None) -> tuple[str, str]:
    """(pattern name, fix hint) for a failed run's output."""
    for pattern in PATTERNS:
        if pattern.regex.search(text):
            return pattern.name, pattern.hint
    if returncode in (-9, 137):
        return "out of memory", KILLED_HINT
    return "unrecognised", "read the traceback above; rerun the experiment alone with `recsmith train`"


def tail(path: Path, lines: int = 200) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
