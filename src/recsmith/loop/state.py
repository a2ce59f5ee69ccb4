"""The loop directory's state file: which steps are done, with what result.

Every step has a key (`day03:train`, `day03:serve:w2`). `run_step` returns a done step's
recorded result without running it again; otherwise it runs the step and records the
result, written atomically (a crash leaves the file as it was before the step). A step is
written so that running it again after a crash mid-way is safe: its outputs are replaced
atomically, a training run resumes from its own checkpoint, a registry addition first looks
for the version it may already have added, and logs served twice are deduplicated by the
join's impression id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from recsmith.atomic import write_json_atomic
from recsmith.errors import ConfigError, DataError

STATE_FILE = "loop_state.json"


def read_state(directory: str | Path) -> dict:
    """A loop directory's state, for reading only."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise DataError(f"{directory}: no loop here (no {STATE_FILE}); run `recsmith loop simulate CONFIG --out "
                        f"{directory}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the loop's state ({exc})") from None


class LoopState:
    def __init__(self, directory: str | Path, config_dump: dict, base: str = ""):
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        if self.path.is_file():
            self.data = read_state(self.directory)
            if self.data.get("config") != config_dump:
                raise ConfigError(f"{self.directory} holds a loop run with another config; use a new --out, or the "
                                  "same config to resume it")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.data = {"config": config_dump, "base": base, "done": {}, "production": None, "release": None, "releases": [],
                         "retrain": False, "consumed_logs": [], "alerts": [], "days": {}}
            self.save()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def done(self, key: str) -> bool:
        return key in self.data["done"]

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def run_step(self, key: str, step: Callable[[], Any]) -> Any:
        """The step's result: recorded if done, else run, recorded and saved with the state."""
        if key in self.data["done"]:
            return self.data["done"][key]
        result = step()
        self.data["done"][key] = result
        self.save()
        return result
