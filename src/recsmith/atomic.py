"""Write files so that an interrupted process never leaves half of one behind.

A write goes to a temp file beside the target, named `.NAME.tmp<pid>.<host>.<token>`; the
file is fsynced, renamed over the target, and the directory fsynced, so after a SIGKILL or
a power cut the target holds either its previous content or the whole new one. A writer
killed half way leaves its temp file behind: the next write of the same target removes
the temp files of writers on this host whose process is gone (never one of a live writer,
nor one from another host sharing the directory, whose pids mean nothing here).

A full disk or a directory that cannot be written ends in a `WriteError` naming the file
and what to do; the target keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

from recsmith.errors import WriteError

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
# errno -> what to do; other OSErrors (a missing input, a bad path) keep their own type
WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free space there (or write elsewhere) and run the command again",
    errno.EDQUOT: "the disk quota is used up: free space there (or write elsewhere) and run the command again",
    errno.EFBIG: "the file is larger than that file system allows: write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "the directory is not writable for this user: fix its permissions or write elsewhere",
    errno.EPERM: "the directory is not writable for this user: fix its permissions or write elsewhere",
}


def temp_prefix(path: Path, tag: str = "tmp") -> str:
    """The start of a temp name beside `path` that says which process on which host owns it."""
    return f".{path.name}.{tag}{os.getpid()}.{HOST}."


def process_alive(pid: int) -> bool:
    """Whether `pid` runs on this host (a zombie not yet reaped counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(path: Path, tag: str = "tmp") -> list[Path]:
    """Delete the temp files (or staging dirs) of `path` left by dead writers on this host;
    returns what was removed. `.NAME.tmp<pid>` without a host is the format of earlier
    versions, written on this host."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{tag}(\d+)(?:\.([A-Za-z0-9-]+)\.\w+)?")
    prefix = f".{path.name}.{tag}"
    removed = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:  # no directory yet, or one we cannot list: nothing to clean
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or (match.group(2) or HOST) != HOST or process_alive(int(match.group(1))):
            continue
        stale = Path(entry.path)
        with contextlib.suppress(OSError):  # another cleaner got there first
            shutil.rmtree(stale) if entry.is_dir(follow_symlinks=False) else stale.unlink()
            removed.append(stale)
    return removed


def write_error(path: Path, exc: OSError) -> OSError:
    """A WriteError naming `path` for a full disk or an unwritable directory, else `exc`."""
    todo = WRITE_FAILURES.get(exc.errno)
    if todo is None:
        return exc
    kept = f"{path.name} keeps its previous content" if path.exists() else f"{path.name} was not written"
    # os.strerror, not exc.strerror: pyarrow's names the temp file and repeats itself
    return WriteError(f"cannot write {path}: {os.strerror(exc.errno)}; {todo} ({kept})")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file under `directory` and the directories themselves (before a rename
    publishes the tree)."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, rename it over `path`, fsync
    the directory; stale temp files of `path` from killed writers go first."""
    path = Path(path)
    remove_stale(path)
    tmp = path.with_name(temp_prefix(path) + secrets.token_hex(4))
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        error = write_error(path, exc)
        if error is exc:
            raise
        raise error from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    import torch

    # serialized in memory first: torch's own file writer reports a full disk as a bare
    # RuntimeError ("unexpected pos"), a plain write names it
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    replace_atomically(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
