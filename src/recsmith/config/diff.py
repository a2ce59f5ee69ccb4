"""Configs as flat dotted keys, and where two configs disagree."""

from __future__ import annotations

from typing import Any


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(before: dict, after: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before, after)} for every leaf that differs (ABSENT where one lacks it),
    sorted by key."""
    a, b = flatten(before), flatten(after)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, ABSENT) != b.get(k, ABSENT))
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys}


def describe(diff: dict[str, tuple[Any, Any]], most: int = 5) -> str:
    """'runtime.seed: 1 → 2, ...' for the first `most` differences."""
    shown = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in list(diff.items())[:most])
    return shown + (f" and {len(diff) - most} more" if len(diff) > most else "")
