"""Checkpoints: everything needed to continue a run exactly, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from recsmith.atomic import save_torch_atomic
from recsmith.errors import DataError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class UnreadableCheckpoint(DataError):
    """A checkpoint file that exists but cannot be loaded; `problem` says what is wrong."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path} is unreadable: {problem}; it was cut short or damaged after it "
                         "was written: restore it from a copy or train the run again (--resume falls back "
                         "to the run's other checkpoint)")
        self.path, self.problem = path, problem


def save_checkpoint(path: Path, state: dict) -> None:
    save_torch_atomic(path, state)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # a truncated or foreign file
        raise UnreadableCheckpoint(path, what_is_wrong(path, exc)) from None


def what_is_wrong(path: Path, exc: Exception) -> str:
    """One line on why `path` did not load (torch's own messages run to several sentences)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC))
    except OSError as error:
        return str(error)
    if size == 0:
        return "the file is empty"
    if head != ZIP_MAGIC:
        return f"not a PyTorch checkpoint ({size:,} bytes without a zip header)"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
    return f"truncated or damaged ({size:,} bytes; {first or type(exc).__name__})"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
