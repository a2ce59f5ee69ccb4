"""A run directory and the files in it. Summaries and reports only ever read these."""

from __future__ import annotations

import json
from pathlib import Path

from recsmith.atomic import write_error, write_text_atomic


class RunDir:
    """Paths of one run's files, and safe JSON-lines appends and reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"  # resolved config
        self.log = self.path / "train.log"
        self.output = self.path / "output.log"  # the process's stdout + stderr (chain runs)
        self.metrics = self.path / "metrics.jsonl"
        self.health = self.path / "expert_health_diag.jsonl"
        self.eval = self.path / "eval.json"
        self.predictions = self.path / "predictions_test.npz"  # what the test metrics were computed from
        self.env = self.path / "env.json"
        self.status = self.path / "status.json"
        self.ckpt_last = self.path / "ckpt_last.pt"
        self.ckpt_best = self.path / "ckpt_best.pt"

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def has_run(self) -> bool:
        return self.ckpt_last.exists() or self.ckpt_best.exists() or self.eval.exists()

    @staticmethod
    def append(path: Path, record: dict) -> None:
        """One JSON line; a line cut short by a kill or a full disk is skipped when read."""
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, allow_nan=True) + "\n")
                handle.flush()
        except OSError as exc:
            raise write_error(path, exc) from None

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        """Records of a JSON-lines file; a line cut short by a crash is skipped."""
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    @classmethod
    def truncate_after_step(cls, path: Path, step: int) -> None:
        """Drop records written after `step` (they belong to work a resume repeats)."""
        if not path.is_file():
            return
        kept = [r for r in cls.read_jsonl(path) if int(r.get("step", 0)) <= step]
        write_text_atomic(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
