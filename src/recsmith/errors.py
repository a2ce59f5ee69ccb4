"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class RecsmithError(Exception):
    """Base class: the message is complete and meant for the user."""

    kind = "error"

    def __str__(self) -> str:  # one line, prefixed by its kind
        return f"{self.kind}: {self.args[0] if self.args else ''}"


class ConfigError(RecsmithError):
    """A config file, override or value is wrong. The message names the dotted key."""

    kind = "config error"


class DataError(RecsmithError):
    """A dataset is missing or malformed. The message names the path."""

    kind = "data error"


class ChainError(RecsmithError):
    """A chain file is inconsistent (for example a locked field differs)."""

    kind = "chain error"


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainingError(RecsmithError):
    """Training cannot go on (for example the loss became NaN)."""

    kind = "training error"


class WriteError(RecsmithError, OSError):
    """A file could not be written (a full disk, a read-only directory); the message names it
    and what to do. An OSError too, so code that tolerates failed writes keeps doing so."""

    kind = "write error"
