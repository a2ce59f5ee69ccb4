"""Checkpoints: everything needed to continue a run exactly, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from recsmith.atomic import save_torch_atomic
from recsmith.errors import DataError


def save_checkpoint(path: Path, state: dict) -> None:
    save_torch_atomic(path, state)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # a truncated or foreign file
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
