"""Downloading raw dataset files: streamed to a partial file with progress, checked
against Content-Length, renamed into place only when complete."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from recsmith.errors import DataError

Progress = Optional[Callable[[int, int], None]]


def fetch(url: str, target: Path, hint: str, progress: Progress = None, timeout: float = 60.0) -> Path:
    """Download `url` to `target`; a DataError (ending with `hint`) when it cannot."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            expected, done = int(response.headers.get("Content-Length") or 0), 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, max(expected, done))
        if expected and done != expected:
            raise DataError(f"{url}: download incomplete ({done:,} of {expected:,} bytes); {hint}")
        partial.rename(target)
    except urllib.error.HTTPError as exc:
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)  # offline, refused, timed out, cut off
        raise DataError(f"could not download {url} ({reason}); this machine may be offline: {hint}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
