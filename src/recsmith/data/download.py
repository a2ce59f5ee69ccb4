"""Downloading raw dataset files: streamed to a temp file with progress, checked against
Content-Length, renamed into place only when complete (recsmith.atomic); and checking a
file's SHA-256 against a pinned digest, or against the one recorded beside it when it was
first downloaded."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from recsmith.atomic import replace_atomically, write_text_atomic
from recsmith.errors import DataError

Progress = Optional[Callable[[int, int], None]]
SIDECAR = ".sha256"  # NAME.sha256 beside a download, in `sha256sum` format


def fetch(url: str, target: Path, hint: str, progress: Progress = None, timeout: float = 60.0) -> Path:
    """Download `url` to `target`; a DataError (ending with `hint`) when it cannot."""

    def download(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                expected, done = int(response.headers.get("Content-Length") or 0), 0
                while block := response.read(1 << 20):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, max(expected, done))
        except urllib.error.HTTPError as exc:
            raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)  # offline, refused, timed out, cut off
            raise DataError(f"could not download {url} ({reason}); this machine may be offline: {hint}") from None
        if expected and done != expected:
            raise DataError(f"{url}: download incomplete ({done:,} of {expected:,} bytes); {hint}")

    target.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(target, download)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded in PATH.sha256, None when there is none."""
    try:
        return sidecar(path).read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None


def sha256_problem(path: Path, pinned: str | None) -> str | None:
    """None when `path`'s SHA-256 matches `pinned`, or when nothing is pinned the digest
    recorded at its first download (PATH.sha256, written now when there is none yet);
    otherwise what differs."""
    actual = sha256_of(path)
    expected = pinned.lower() if pinned else recorded_sha256(path)
    if expected is None:
        write_text_atomic(sidecar(path), f"{actual}  {path.name}\n")
        return None
    if actual == expected:
        return None
    source = "the pinned checksum of the official file" if pinned else \
        f"the one recorded at its first download in {sidecar(path)}"
    return f"SHA-256 {actual} differs from {source} ({expected})"
