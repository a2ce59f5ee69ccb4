"""`recsmith sweep SWEEP.yaml`: one experiment config, a grid (or list) of overrides, each
point trained in its own run dir, several at once with `--parallel N`.

    name: lr_sweep
    base: ../experiments/mtl_funnel/E2_deepfm_shared_esmm.yaml   # relative to this file
    set: {runtime.max_train_steps: 1000}        # applied to every point
    grid:                                        # every combination ...
      optim.dense.lr: [0.0003, 0.0006, 0.001]
    points:                                      # ... and / or listed points
      - {}                                       # the base config itself
      - {optim.dense.lr: 0.002, optim.sparse.lr: 0.003}
    parallel: 1                                  # processes at once (--parallel overrides)
    save_model: {top_k: 2}                       # keep checkpoints of the 2 best points only

Every point's config is resolved and validated before anything runs. With N workers each
gets cores / N torch threads (two PyTorch jobs with all threads each on a small machine
slow each other by an order of magnitude); every run records its thread count, and the
summary flags runs that shared the machine. Points are ranked by the base config's
primary key on the *valid* split (test numbers are reported, never used to choose).
sweep_impact.png (and `recsmith report` on the output dir) plots each swept key's values
against the valid and test primary metric: the points that set the key, and the base point.
An interrupted sweep resumes with `--resume`: finished points are kept, partial ones
continue from their last checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.config.loader import dump_yaml, get_dotted, load_with_extends, resolve_experiment, validate_model
from recsmith.env_info import busy_cpu_seconds
from recsmith.errors import ChainError, ConfigError
from recsmith.experiments.keep import SaveModel, prune_checkpoints
from recsmith.experiments.plots import hyperparameter_impact
from recsmith.experiments.summary import run_status
from recsmith.metrics.direction import lower_is_better
from recsmith.experiments.runner import train_command
from recsmith.run_dir import RunDir


IMPACT_CHART = "sweep_impact.png"  # the hyperparameter-impact chart, beside sweep_summary.csv
SHARED = 0.1  # other processes using more than this share of the CPUs: the timing is not clean


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    base: str
    set: dict[str, Any] = {}
    grid: dict[str, list] = {}
    points: list[dict[str, Any]] = []
    output_dir: Optional[str] = None
    parallel: int = Field(1, ge=1, le=64)
    save_model: SaveModel = Field(default_factory=SaveModel)


class Point:
    def __init__(self, index: int, overrides: dict, config, output: Path):
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]
        self.id = f"p{index:03d}-{digest}"
        self.overrides, self.config = overrides, config
        self.run = RunDir(output / self.id)
        self.config_file = output / "configs" / f"{self.id}.yaml"


class Sweep:
    def __init__(self, path: str | Path, parallel: int | None = None, nproc: int = 1):
        """`nproc` > 1 trains each point as that many DDP processes (torchrun)."""
        self.path = Path(path)
        raw, provenance = load_with_extends(self.path)
        self.spec = validate_model(SweepSpec, raw, provenance, where=str(self.path))
        if not self.spec.grid and not self.spec.points:
            raise ConfigError(f"{self.path}: a sweep needs `grid:` or `points:` (nothing to vary)")
        self.parallel, self.nproc = parallel or self.spec.parallel, nproc
        self.threads = max(1, (os.cpu_count() or 1) // (self.parallel * nproc))
        self.output = Path(self.spec.output_dir or Path("runs") / "sweeps" / self.spec.name)
        base = (self.path.parent / self.spec.base).resolve()
        keys = list(self.spec.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*self.spec.grid.values())] if keys else []
        self.points = []
        for index, overrides in enumerate(combos + list(self.spec.points)):
            settings = {**self.spec.set, **overrides, "runtime.num_threads": self.threads}
            try:  # every point is checked before anything runs
                config, _ = resolve_experiment(base, settings)
            except ConfigError as exc:
                raise ConfigError(f"{self.path} point {index} {overrides}: "
                                  f"{str(exc).removeprefix(ConfigError.kind + ': ')}") from None
            self.points.append(Point(index, overrides, config, self.output))
        self.primary = self.points[0].config.runtime.best_selection.primary_key

    def run(self, resume: bool, echo=print) -> int:
        if not resume:
            taken = [p.id for p in self.points if p.run.has_run()]
            if taken:
                raise ChainError(f"{self.output} already holds sweep points ({', '.join(taken[:3])}...): "
                                 "pass --resume to continue, or set another output_dir")
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "configs").mkdir(exist_ok=True)
        todo = [p for p in self.points if not (resume and p.run.eval.exists())]
        echo(f"sweep {self.spec.name}: {len(self.points)} points, {len(self.points) - len(todo)} already done, "
             f"{self.parallel} at once with {self.threads} torch thread(s) each")
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for point, outcome in zip(todo, pool.map(lambda p: self._train(p, resume), todo)):
                echo(f"  {point.id} {point.overrides}: {outcome['status']} in {outcome['wall_seconds']:.0f} s")
        rows = self.summarize()
        failed = [r for r in rows if r["status"] != "success"]
        return 1 if failed else 0

    def _train(self, point: Point, resume: bool) -> dict:
        write_text_atomic(point.config_file, dump_yaml(point.config.model_dump(mode="json")))
        point.run.create()
        # resume a point holding a checkpoint: ckpt_last, or ckpt_best when ckpt_last is gone
        command = train_command(point.config_file, point.run.path, resume and point.run.has_run(), self.nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        busy, children, started = busy_cpu_seconds(), _children_cpu_seconds(), time.time()
        with open(point.run.output, "a", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.time() - started
        others = None  # the CPU share other processes took (alone only: parallel workers' children mix)
        if self.parallel == 1 and busy is not None:
            spent = (busy_cpu_seconds() - busy) - (_children_cpu_seconds() - children)
            others = round(max(0.0, spent / (wall * (os.cpu_count() or 1))), 3)
        outcome = {"point": point.id, "overrides": point.overrides, "status": "success" if code == 0 else "failed",
                   "returncode": code, "wall_seconds": round(wall, 1), "threads": self.threads,
                   "parallel": self.parallel, "other_cpu_share": others,
                   "machine_shared": self.parallel > 1 or (others is not None and others > SHARED)}
        write_json_atomic(point.run.path / "sweep_point.json", outcome)
        return outcome

    def summarize(self) -> list[dict]:
        """sweep_summary.csv/json from the run dirs; prunes checkpoints beyond save_model.top_k."""
        rows = []
        for point in self.points:
            result = point.run.read_json(point.run.eval) or {}
            timing = point.run.read_json(point.run.path / "sweep_point.json") or {}
            rows.append({"point": point.id, **{f"set.{k}": v for k, v in point.overrides.items()},
                         "status": run_status(point.run), f"valid_{self.primary}": result.get("valid", {}).get(self.primary),
                         f"test_{self.primary}": result.get("test", {}).get(self.primary),
                         "best_step": result.get("best_step"), "wall_seconds": timing.get("wall_seconds"),
                         "threads": timing.get("threads"), "other_cpu_share": timing.get("other_cpu_share"),
                         "machine_shared": timing.get("machine_shared"),
                         "run_dir": str(point.run.path)})
        key = f"valid_{self.primary}"
        ranked = sorted((r for r in rows if r[key] is not None), key=lambda r: r[key],
                        reverse=not lower_is_better(self.primary))
        for rank, row in enumerate(ranked, 1):
            row["rank"] = rank
        pruned = prune_checkpoints({r["point"]: (Path(r["run_dir"]), r[key]) for r in rows}, self.primary,
                                   self.spec.save_model.top_k)
        for row in rows:
            if row["point"] in pruned:
                row["checkpoints"] = "pruned"
        impact = self.impact(rows)
        write_json_atomic(self.output / "sweep_summary.json", {"sweep": self.spec.name, "primary_key": self.primary,
                                                                "ranked_by": key, "points": rows, "impact": impact})
        if any(p["valid"] is not None for points in impact.values() for p in points):
            hyperparameter_impact(impact, self.primary, self.output / IMPACT_CHART)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.output / "sweep_summary.csv", buffer.getvalue())
        return rows

    def impact(self, rows: list[dict]) -> dict[str, list[dict]]:
        """Per swept key, the points that set it and the base point (`{}`, if listed): the
        key's value in the point's resolved config and its valid and test primary metric."""
        keys = list(dict.fromkeys(k for point in self.points for k in point.overrides))
        panels: dict[str, list[dict]] = {}
        for key in keys:
            panels[key] = [{"point": point.id, "value": get_dotted(point.config.model_dump(mode="json"), key),
                            "base": not point.overrides, "valid": row[f"valid_{self.primary}"],
                            "test": row[f"test_{self.primary}"]}
                           for point, row in zip(self.points, rows) if key in point.overrides or not point.overrides]
        return panels
