"""Runs a chain: each experiment in its own `recsmith train` process, in order, with a
progress bar, a time limit, resume, and a diagnosis when something fails."""

from __future__ import annotations

import copy
import ctypes
import datetime as dt
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.config.loader import display_path, dump_yaml
from recsmith.data.compatibility import check_experiment_fits
from recsmith.data.schema import DatasetSchema
from recsmith.data.sources import resolve_dataset
from recsmith.errors import ChainError
from recsmith.experiments.chain import ResolvedChain, ResolvedExperiment, diff_from_base
from recsmith.experiments.diagnosis import recognise, tail
from recsmith.experiments.seeds import with_seed, write_seed_summary
from recsmith.experiments.alarms import applying
from recsmith.experiments.columns import PRIMARY, TEXT_HEADLINE, headline_metrics, informative
from recsmith.experiments.keep import prune_checkpoints
from recsmith.experiments.summary import build_summary, metric_columns, oracle_values, write_summary
from recsmith.plugins import family_of
from recsmith.run_dir import RunDir
from recsmith.train.distributed import launch_command, worker_environment

POLL_SECONDS = 0.5
TABLE_FAMILIES = ("auc", "ndcg", "hr", "mrr", "loss")  # the printed table's metrics
DEFAULT_TIMEOUT = 6 * 3600


@dataclass
class Outcome:
    exp_id: str
    status: str  # success | failed | timeout | interrupted | skipped
    returncode: int | None = None
    wall_seconds: float = 0.0


def train_command(config_file: Path, run_dir: Path, resume: bool, nproc: int = 1) -> list[str]:
    """`recsmith train` of one experiment; with `nproc` > 1 as that many DDP processes (torchrun)."""
    args = ["train", str(config_file), "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    return launch_command(nproc, args) if nproc > 1 else [sys.executable, "-m", "recsmith", *args]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the chain process dies, even by `kill -9` (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ChainRunner:
    def __init__(self, chain: ResolvedChain, console: Console, timeout: float = DEFAULT_TIMEOUT, nproc: int = 1):
        """`nproc` > 1 trains each experiment as that many DDP processes (fitted models: one)."""
        self.chain, self.console, self.timeout, self.nproc = chain, console, timeout, nproc

    def processes(self, exp: ResolvedExperiment) -> int:
        return 1 if family_of(exp.config).fitted(exp.config) else self.nproc

    def config_file(self, exp: ResolvedExperiment) -> Path:
        return self.chain.output_dir / "configs" / f"{exp.id}.yaml"

    # ----------------------------------------------------------------- dry run
    def dry_run(self, selected: list[ResolvedExperiment], resume: bool) -> None:
        self.console.print(f"[bold]chain {self.chain.spec.name}[/]: {len(selected)} experiments, "
                           f"output {display_path(self.chain.output_dir)} (dry run: nothing is run or written)")
        for exp in selected:
            run = RunDir(self.chain.output_dir / exp.id)
            done = resume and run.eval.exists()
            self.console.print(f"\n[bold]{exp.id}[/] {exp.description}" + ("  [green](done, would skip)[/]" if done else ""))
            self.console.print("  " + " ".join(train_command(self.config_file(exp), run.path, resume,
                                                             self.processes(exp))))
            for key, base, value in diff_from_base(self.chain, exp):
                self.console.print(f"    {key}: {base!r} → {value!r}")

    # --------------------------------------------------------------------- run
    def run(self, selected: list[ResolvedExperiment], resume: bool) -> int:
        out = self.chain.output_dir
        if not resume:
            taken = [e.id for e in selected if RunDir(out / e.id).has_run()]
            if taken:
                raise ChainError(f"{display_path(out)} already holds runs of {', '.join(taken)}: "
                                 "pass --resume to continue them, or --output another dir")
        self._prepare_data(selected)
        code = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as progress:
            overall = progress.add_task(f"chain {self.chain.spec.name}", total=len(selected))
            for exp in selected:
                outcome = self._run_one(exp, resume, progress)
                progress.advance(overall)
                self._announce(exp, outcome)
                if outcome.status not in ("success", "skipped"):
                    code = 130 if outcome.status == "interrupted" else 1
                    break
        rows = build_summary(self.chain)
        with self.console.status("summary: paired bootstrap intervals and DeLong tests for each delta"):
            paths = write_summary(self.chain, rows)
        self._report(rows, paths)
        self._keep_best(rows)
        return code

    def _keep_best(self, rows: list[dict]) -> None:
        """save_model.top_k: the checkpoints of the k best runs by validation primary metric."""
        top_k = self.chain.spec.save_model.top_k
        keys = {r["primary_key"] for r in rows if r.get("primary_key")}
        if top_k is None or not keys:
            return
        if len(keys) > 1:
            self.console.print(f"save_model.top_k: the runs select by different metrics ({', '.join(sorted(keys))}), "
                               "so no ranking: every checkpoint kept")
            return
        runs = {r["exp_id"]: (self.chain.output_dir / r["exp_id"], r.get("valid_auc_primary")) for r in rows}
        pruned = prune_checkpoints(runs, keys.pop(), top_k)
        if pruned:
            self.console.print(f"save_model.top_k {top_k}: deleted the checkpoints of {', '.join(pruned)} (their "
                               "eval.json, reports and predictions stay)", highlight=False)

    def run_seeds(self, selected: list[ResolvedExperiment], resume: bool, seeds: list[int],
                  dry_run: bool = False) -> int:
        """The chain once per seed (seed_<s>/ each), then the summary across seeds."""
        ids, code = [e.id for e in selected], 0
        for number, seed in enumerate(seeds, 1):
            self.console.rule(f"seed {seed} ({number} of {len(seeds)})")
            runner = ChainRunner(with_seed(self.chain, seed), self.console, self.timeout, self.nproc)
            chosen = runner.chain.select(only=ids)
            if dry_run:
                runner.dry_run(chosen, resume)
                continue
            code = runner.run(chosen, resume)
            if code:
                break
        if not dry_run:
            for path in write_seed_summary(self.chain, seeds):
                self.console.print(f"wrote {display_path(path)}")
        return code

    def _prepare_data(self, selected: list[ResolvedExperiment]) -> None:
        """Prepare each distinct dataset once, and check every experiment fits its dataset."""
        schemas: dict[tuple, DatasetSchema] = {}
        for exp in selected:
            data = exp.config.data
            key = (data.source, data.path, data.seed, data.synthetic.model_dump_json())
            if key not in schemas:
                with Progress(TextColumn("preparing data"), BarColumn(), MofNCompleteColumn(),
                              console=self.console, transient=True) as progress:
                    task = progress.add_task("data", total=None)
                    path = resolve_dataset(data, lambda done, total: progress.update(task, completed=done, total=total))
                self.console.print(f"dataset: {display_path(path)}")
                schemas[key] = DatasetSchema.load(path)
            check_experiment_fits(exp.config, schemas[key])

    def _run_one(self, exp: ResolvedExperiment, resume: bool, progress: Progress) -> Outcome:
        run = RunDir(self.chain.output_dir / exp.id)
        if resume and run.eval.exists():
            self.console.print(f"{exp.id}: already complete, skipped")
            return Outcome(exp.id, "skipped")
        run.create()
        config_file = self.config_file(exp)
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(exp.data)  # MLflow groups a chain's runs under the chain's name
        tracking = config.setdefault("tracking", {})
        tracking["mlflow_experiment"] = tracking.get("mlflow_experiment") or self.chain.spec.name
        write_text_atomic(config_file, dump_yaml(config))
        nproc = self.processes(exp)
        command = train_command(config_file, run.path, resume, nproc)
        max_steps = exp.config.runtime.max_train_steps
        task = progress.add_task(f"{exp.id} {exp.description}", total=max_steps)
        started = time.time()
        # time of earlier sessions that ended normally (a SIGKILLed one recorded none)
        earlier = ((run.read_json(run.status) or {}).get("wall_seconds") or 0.0) if resume else 0.0
        status = {"exp_id": exp.id, "status": "running", "command": command,
                  "started": dt.datetime.now().isoformat(timespec="seconds")}
        write_json_atomic(run.status, status)
        env = {**(worker_environment(nproc) if nproc > 1 else os.environ), "PYTHONUNBUFFERED": "1",
               "RECSMITH_NO_PROGRESS": "1"}
        with open(run.output, "a", encoding="utf-8") as output:
            output.write(f"\n=== {status['started']} {' '.join(command)}\n")
            output.flush()
            child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent if os.name == "posix" else None)
            result = self._wait(child, run, progress, task, started)
        wall = time.time() - started
        progress.update(task, completed=self._last_step(run))
        outcome = Outcome(exp.id, result, child.returncode, wall)
        status.update(status=result, returncode=child.returncode, wall_seconds=round(earlier + wall, 2),
                      ended=dt.datetime.now().isoformat(timespec="seconds"))
        if result != "success":
            status.update(self._diagnose(exp, run, outcome))
        write_json_atomic(run.status, status)
        return outcome

    def _wait(self, child: subprocess.Popen, run: RunDir, progress: Progress, task, started: float) -> str:
        try:
            while child.poll() is None:
                if time.time() - started > self.timeout:
                    self._stop(child)
                    return "timeout"
                progress.update(task, completed=self._last_step(run))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._stop(child)
            return "interrupted"
        return "success" if child.returncode == 0 and run.eval.exists() else "failed"

    @staticmethod
    def _stop(child: subprocess.Popen) -> None:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    @staticmethod
    def _last_step(run: RunDir) -> int:
        records = [r for r in RunDir.read_jsonl(run.metrics) if r.get("type") == "train"]
        return records[-1]["step"] if records else 0

    # -------------------------------------------------------------- reporting
    def _announce(self, exp: ResolvedExperiment, outcome: Outcome) -> None:
        if outcome.status != "success":
            return
        run = RunDir(self.chain.output_dir / exp.id)
        result = run.read_json(run.eval) or {}
        key = result.get("primary_key", "")
        steps = result.get("steps", result.get("max_train_steps"))
        where = f" (best step {result.get('best_step')} of {steps})" if steps else ""
        self.console.print(f"{exp.id} done in {outcome.wall_seconds:.0f}s: test {key} "
                           f"{result.get('test', {}).get(key, float('nan')):.4f}{where}")

    def _diagnose(self, exp: ResolvedExperiment, run: RunDir, outcome: Outcome) -> dict:
        output, log = tail(run.output), tail(run.log)
        if outcome.status == "timeout":
            pattern = "timeout"
            hint = (f"{exp.id} ran past --timeout {self.timeout:.0f}s at step {self._last_step(run)} of "
                    f"{exp.config.runtime.max_train_steps}: check samples_per_s in metrics.jsonl, lower "
                    "runtime.max_train_steps, or raise --timeout; `chain run --resume` continues it")
        elif outcome.status == "interrupted":
            pattern, hint = "interrupted", "`recsmith chain run CHAIN --resume` continues from the last checkpoint"
        else:
            pattern, hint = recognise(output + "\n" + log, outcome.returncode)
        c = self.console
        c.rule(f"[red]{exp.id} {outcome.status}[/] (exit code {outcome.returncode})")
        c.print(f"[bold]last 200 lines of {display_path(run.output)}[/]", markup=True)
        c.print(output or "(empty)", markup=False, highlight=False)
        c.print(f"[bold]last 200 lines of {display_path(run.log)}[/]", markup=True)
        c.print(log or "(empty)", markup=False, highlight=False)
        c.rule()
        c.print(f"[bold red]diagnosis:[/] {pattern}")
        c.print(f"[bold]fix:[/] {hint}", markup=True)
        return {"pattern": pattern, "hint": hint}

    def _report(self, rows: list[dict], paths) -> None:
        from rich.table import Table

        table = Table(title=f"chain {self.chain.spec.name} (test split, best checkpoint; "
                            "* = the run's primary metric, ! = sanity alarm)")
        metrics = table_metrics(rows)
        for column in ("exp", "status", "best_step", *metrics):
            table.add_column(column, justify="left" if column in ("exp", "status", "primary_key") else "right")
        for r in rows:
            table.add_row(r["exp_id"], r["status"], "" if r.get("best_step") is None else str(r["best_step"]),
                          *(_table_cell(r, m) for m in metrics))
        self.console.print(table)
        for r in rows:
            for alarm in r.get("alarms") or []:
                self.console.print(f"[bold red]alarm[/] {r['exp_id']}: {alarm['message']}", highlight=False)
        precisions = {r["exp_id"]: f"trained in {r['train_precision']}, scored in {r['score_precision']}"
                      for r in rows if r["train_precision"]}
        budgets = {r["exp_id"]: r["budget"] for r in rows if r["budget"]}
        for label, values in (("precision", precisions), ("budget", budgets)):
            for value in dict.fromkeys(values.values()):
                self.console.print(f"{label} ({', '.join(e for e, v in values.items() if v == value)}): {value}")
        oracle = oracle_values(rows)
        if oracle:
            self.console.print("oracle AUC: " + "  ".join(f"{m.removeprefix('auc_')} {v:.4f}" for m, v in oracle.items()))
        for path in paths:
            self.console.print(f"wrote {display_path(path)}")


def table_metrics(rows: list[dict]) -> list[str]:
    """The metric columns of the table printed after a chain: a text classifier's accuracy,
    macro-F1 and AUC, each task's AUC, the top-K metrics at the headline cutoff and the
    loss, none empty in every row; the primary
    metric gets columns of its own only when some run's primary metric is not among them."""
    columns = metric_columns(rows)
    text = [m for m in TEXT_HEADLINE if m in columns]
    shown = informative(rows, text + headline_metrics(columns, TABLE_FAMILIES))
    keys = {r["primary_key"] for r in rows if r.get("primary_key")}
    return shown if keys <= set(shown) else ["primary_key", PRIMARY, *shown]


def _table_cell(row: dict, metric: str) -> str:
    value = row.get(metric)
    if metric == "primary_key":
        return value or ""
    if not isinstance(value, float) or math.isnan(value):
        return ""
    named = row.get("primary_key") if metric == PRIMARY else metric
    return (f"{value:.4f}" + ("*" if metric == row.get("primary_key") else "")
            + (" !" if applying(row.get("alarms") or [], named) else ""))
