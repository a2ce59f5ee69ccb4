"""Write files so that an interrupted process never leaves half of one behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    import torch

    replace_atomically(path, lambda tmp: torch.save(obj, tmp))
