"""The `recsmith` command. Thin: parses arguments, calls library functions, prints."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from recsmith.errors import ConfigError, RecsmithError
from recsmith.online.store import DEFAULT_URI as DEFAULT_STORE

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="recsmith: ranking-model experiments for ads and recommendation.")
chain_app = typer.Typer(no_args_is_help=True, help="Run and inspect experiment chains (E0a..E5).")
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets.")
app.add_typer(chain_app, name="chain")
app.add_typer(data_app, name="data")
features_app = typer.Typer(no_args_is_help=True, help="The online feature store (user histories, item statistics).")
app.add_typer(features_app, name="features")

console = Console(soft_wrap=True)  # long paths and commands stay on one line
SetOption = typer.Option(None, "--set", help="Override a config key: dotted.key=value (repeatable).")


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("RECSMITH_NO_PROGRESS")


def setup_logging(handler: logging.Handler | None = None) -> None:
    logger = logging.getLogger("recsmith")
    logger.setLevel(logging.INFO)
    for old in list(logger.handlers):
        if getattr(old, "_recsmith_console", False):
            logger.removeHandler(old)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler._recsmith_console = True
    logger.addHandler(handler)


def _overrides(items: Optional[List[str]]) -> dict:
    from recsmith.config.loader import parse_overrides

    return parse_overrides(items or [])


def _ids(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


# --------------------------------------------------------------------------- train
@app.command()
def train(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
          set_: Optional[List[str]] = SetOption,
          run_dir: Optional[Path] = typer.Option(None, help="Run directory (default runs/NAME-TIME)."),
          resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/ckpt_last.pt."),
          init_from: Optional[Path] = typer.Option(
              None, "--init-from", help="Warm-start from a finished ranking run (a model update on newer data): "
                                        "its encoders are extended with new ids (data.extend_vocab_from), its "
                                        "best weights copied (known ids keep their embedding rows, new ids "
                                        "start fresh); the optimizer starts fresh. Sets runtime.init_from; "
                                        "pass it again with --resume."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Train as N DDP processes on this machine (starts "
                                    "torchrun; a run started by torchrun itself needs no flag).")) -> None:
    """Train one experiment; writes config.yaml, train.log, metrics.jsonl, checkpoints, eval.json."""
    from recsmith.config.loader import load_experiment
    from recsmith.experiments.tracking import recorder
    from recsmith.train.run import train_run

    overrides = _overrides(set_)
    if init_from is not None:
        overrides["runtime.init_from"] = str(init_from.expanduser().resolve())
    cfg = load_experiment(config, overrides)
    if run_dir is None:
        if resume:
            raise RecsmithError("--resume needs --run-dir (the run to continue)")
        run_dir = Path("runs") / f"{cfg.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # every worker gets the same run dir
        raise typer.Exit(_launch(nproc, ["train", str(config), "--run-dir", str(run_dir),
                                         *(["--resume"] if resume else []),
                                         *(f"--set={item}" for item in set_ or []),
                                         *(["--init-from", str(init_from)] if init_from else [])]))
    record = recorder(cfg, run_dir)  # experiment_tracker.csv (and MLflow) hear how the run ends
    worker = os.environ.get("RANK", "0") != "0"  # a torchrun worker other than rank 0: no progress bar
    if not interactive() or worker:
        setup_logging()
        result = train_run(cfg, run_dir, resume=resume, on_end=record)
    else:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            setup_logging(RichHandler(console=progress.console, show_path=False))
            task = progress.add_task(cfg.name, total=cfg.runtime.max_train_steps, info="")
            data_task = progress.add_task("data", total=None, info="", visible=False)

            def on_data(done: int, total: int) -> None:
                progress.update(data_task, completed=done, total=total, visible=True)

            def on_step(step: int, record: dict) -> None:
                progress.update(task, completed=step,
                                info=f"loss {record['loss']:.4f} · {record['samples_per_s']:,.0f} samples/s")

            result = train_run(cfg, run_dir, resume=resume, on_step=on_step, data_progress=on_data, on_end=record)
    if not worker:
        _print_result(result, run_dir)


def _launch(nproc: int, args: list[str]) -> int:
    """`recsmith ARGS` as `nproc` DDP processes under torchrun; its exit code."""
    import subprocess

    from recsmith.train.distributed import launch_command, worker_environment

    code = subprocess.run(launch_command(nproc, args), env=worker_environment(nproc)).returncode
    if code != 0:  # torchrun's report above names the rank that failed first ("Root Cause")
        again = "" if "--resume" in args else " with --resume"
        print(f"error: the {nproc}-process job stopped (torchrun exit {code}; its 'Root Cause' above names the rank "
              f"that failed first); run the same command{again} to continue from the last checkpoint", file=sys.stderr)
    return code


def _print_result(result: dict, run_dir: Path) -> None:
    if not result:
        return
    key = result["primary_key"]
    console.print(f"best {key} on valid {result['valid'].get(key, float('nan')):.6f} at step "
                  f"{result['best_step']}; on test {result['test'].get(key, float('nan')):.6f}")
    console.print(f"run dir: {run_dir}")


# ------------------------------------------------------------------------ evaluate
@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A run directory."),
             split: str = typer.Option("test", help="train, valid or test."),
             checkpoint: str = typer.Option("best", help="best or last."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Evaluate a run's checkpoint on a split and print every metric."""
    from recsmith.train.evaluate_run import evaluate_run

    metrics = evaluate_run(run_dir, split, checkpoint)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{run_dir} · ckpt_{checkpoint} · {split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.6f}" if isinstance(value, float) else str(value))
    console.print(table)


# ------------------------------------------------------------------------- explain
@app.command()
def explain(run_dir: Path = typer.Argument(..., help="A lightgbm or hybrid run directory."),
            user: str = typer.Option(..., help="Raw user id (as in the data files)."),
            item: str = typer.Option(..., help="Raw item id."),
            split: str = typer.Option("test", help="Score at the time of the user's valid or test target."),
            top: int = typer.Option(10, help="Contributions to show.")) -> None:
    """Explain one prediction: score, top SHAP contributions, and the first tree's path."""
    from recsmith.train.fitted import explain_prediction

    if split not in ("valid", "test"):
        raise ConfigError(f"--split: '{split}' is not valid or test")
    why, ctx = explain_prediction(run_dir, user, item, split)
    console.print(f"user {ctx['user']}, item {ctx['item']} at the user's {split} time {ctx['time']} "
                  f"({ctx['history_length']} earlier interactions; the item actually watched: {ctx['true_item']})")
    console.print(f"{ctx['architecture']}: P(like) = {why.probability:.4f}  (raw score {why.raw_score:+.4f} = "
                  f"bias {why.bias:+.4f} + the sum of {len(why.contributions)} SHAP contributions)")
    console.print(f"top {min(top, len(why.contributions))} contributions (LightGBM pred_contrib):")
    for name, value, contribution in why.contributions[:top]:
        console.print(f"  {contribution:+.4f}  {name} = {value:.4g}", markup=False, highlight=False)
    console.print(f"decision path of tree 1 of {why.trees} (leaf value {why.leaf_value:+.4f}):")
    for step in why.path:
        console.print(f"  {step}", markup=False, highlight=False)


# --------------------------------------------------------------- export · predict · serve
@app.command()
def export(run_dir: Path = typer.Argument(..., help="A finished ranking or sequence (neural) run directory."),
           format_: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
           out: Optional[Path] = typer.Option(None, "--out", help="Bundle directory (default RUN_DIR/export-FORMAT)."),
           parity_rows: Optional[int] = typer.Option(None, "--parity-rows", min=1,
                                                     help="Test rows to check parity on (default: the whole split).")) -> None:
    """Export the model (with its encoders, in a bundle) and check parity with PyTorch on the test split."""
    from recsmith.serve.export import export_run

    with console.status(f"exporting {run_dir} as {format_} and checking parity"):
        report = export_run(run_dir, format_, out, parity_rows)
    worst = max(report["max_abs_diff"].values())
    console.print(f"wrote {report['out']}/{report['file']}: outputs {', '.join(report['outputs'])}; "
                  f"max |exported − PyTorch| = {worst:.2e} on {report['parity_rows']:,} test rows "
                  f"(tolerance {report['tolerance']:g})")


def _row_progress(what: str) -> Progress:
    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=not interactive())


@app.command()
def predict(model: str = typer.Argument(..., help="A run dir, a bundle dir, or a registry ref (name, name@stage, name@vN)."),
            input_: Path = typer.Option(..., "--input", help="Raw rows: a Parquet file, a folder of them, or a CSV."),
            output: Path = typer.Option(..., "--output", help="Parquet or CSV: the input's columns + prob_<output>."),
            chunk_rows: int = typer.Option(65_536, "--chunk-rows", min=1, help="Rows scored at a time."),
            registry: Optional[Path] = typer.Option(None, "--registry", help="Registry root for a ref."),
            store: Optional[str] = typer.Option(
                None, "--store", help="A sequence run's online store: rows of user, item[, at] (rankers) or "
                                      "user[, at] (recommenders) answered from it."),
            k: int = typer.Option(10, "--k", min=1, help="With --store, a recommender's items per row."),
            exclude_seen: bool = typer.Option(False, "--exclude-seen", help="With --store: leave out seen items.")) -> None:
    """Batch inference: stream a file through the model's encoders and model in chunks (a
    sequence run: each row answered from its online store, as the service answers it)."""
    from recsmith.serve.batch import predict_file

    if store:
        from recsmith.online.batch import StoreScorer
        from recsmith.online.scoring import SequenceService
        from recsmith.online.store import open_store

        scorer, label = StoreScorer(SequenceService(model, open_store(store)), k, exclude_seen), model
    else:
        from recsmith.serve.sources import ModelSource

        loaded = ModelSource(registry).load(model)
        scorer, label = loaded.scorer, loaded.label
    with _row_progress("scoring") as progress:
        task = progress.add_task("rows", total=None)
        rows = predict_file(scorer, input_, output, chunk_rows,
                            lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"scored {rows:,} rows with {label} into {output}")


@app.command()
def serve(model: str = typer.Option(..., "--model", help="A registry ref (name, name@stage, name@vN) or a bundle/run dir."),
          host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
          port: int = typer.Option(8000, help="Port."),
          token: Optional[str] = typer.Option(None, "--token", envvar="RECSMITH_SERVE_TOKEN",
                                              help="Bearer token required on /predict and /metadata."),
          admin_token: Optional[str] = typer.Option(
              None, "--admin-token", envvar="RECSMITH_ADMIN_TOKEN",
              help="Bearer token for /admin/swap and /admin/canary; without it the admin API is off."),
          allow_local_models: bool = typer.Option(
              False, "--allow-local-models", help="Let admin requests name run/bundle dirs, not only registry refs."),
          allowed_host: Optional[List[str]] = typer.Option(
              None, "--allowed-host", help="A Host name to answer besides the loopback names (repeatable; '*': any)."),
          registry: Optional[Path] = typer.Option(None, "--registry", help="Registry root."),
          canary: Optional[str] = typer.Option(None, "--canary", help="Gray release: a second model ..."),
          canary_share: float = typer.Option(0.0, "--canary-share", help="... and the share of traffic it gets (≤ 0.5)."),
          watch: float = typer.Option(0.0, "--watch", help="Poll the registry every N seconds; hot-swap a new version."),
          log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Log requests and features to Parquet here."),
          log_fsync_seconds: float = typer.Option(
              1.0, "--log-fsync-seconds", help="fsync the request log this often (0: before every answer)."),
          max_batch: int = typer.Option(1000, "--max-batch", min=1, help="Rows per request (more: 413)."),
          max_body_bytes: Optional[int] = typer.Option(
              None, "--max-body-bytes", min=1, help="Request body bytes (more: 413; default 4 KiB per --max-batch row)."),
          max_pending: int = typer.Option(32, "--max-pending", min=1, help="Requests admitted at once (more: 503)."),
          batch_wait_ms: float = typer.Option(
              0.0, "--batch-wait-ms", min=0.0, max=50.0,
              help="Micro-batching: how long a model call waits for more concurrent requests (0: only those already waiting)."),
          batch_max_rows: int = typer.Option(4096, "--batch-max-rows", min=1, help="Micro-batching: rows per model call."),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads for inference."),
          backend: str = typer.Option(
              "torch", "--backend", help="torch, or onnx: ONNX Runtime on a `recsmith export --format onnx` bundle."),
          store: Optional[str] = typer.Option(
              None, "--store", help="A sequence run's online store (sqlite:///PATH.db, redis://...): "
                                    "POST /recommend, /predict {user, candidates}, /events."),
          events_token: Optional[str] = typer.Option(
              None, "--events-token", envvar="RECSMITH_EVENTS_TOKEN",
              help="Bearer token for POST /events (with --store); without it events are refused.")) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, GET /metadata, hot swap, gray release;
    with --store, a sequence run: POST /recommend, /predict {user, candidates}, /events."""
    from recsmith.serve.app import ServeSettings
    from recsmith.serve.server import allowed_hosts, make_app, make_online_app, run_service

    setup_logging()
    settings = ServeSettings(max_batch=max_batch, max_body_bytes=max_body_bytes, max_pending=max_pending,
                             token=token or None, admin_token=admin_token or None,
                             allow_local_models=allow_local_models, allowed_hosts=allowed_hosts(host, allowed_host or []),
                             log_dir=log_dir, log_fsync_seconds=log_fsync_seconds, watch_seconds=watch,
                             batch_wait_ms=batch_wait_ms, batch_max_rows=batch_max_rows)
    if store:
        app_ = make_online_app(model, store, settings, events_token or None, threads)
        console.print(f"serving {model} from {store} on http://{host}:{port} (POST /recommend or /predict, "
                      f"GET /health, GET /metadata; events {'on' if events_token else 'off'})", highlight=False)
        run_service(app_, host, port, settings)
        return
    app_ = make_app(model, settings, str(registry) if registry else None, canary, canary_share, threads, backend)
    admin = "on" if settings.admin_token else "off"
    console.print(f"serving {model} on http://{host}:{port} (POST /predict, GET /health, GET /metadata; admin API {admin})")
    run_service(app_, host, port, settings)


# -------------------------------------------------------------------------- report
@app.command()
def report(directory: Path = typer.Argument(..., help="A chain, --seeds or sweep output dir, or a dir of run dirs.")) -> None:
    """Write EXPERIMENT_REPORT.md and a self-contained report.html (charts in DIR/report/)."""
    from recsmith.experiments.report import build_report

    with console.status("building the report"):
        paths = build_report(directory)
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
def findings(directory: Path = typer.Argument(..., help="A chain's output dir, a --seeds output dir, or a dir of run dirs.")) -> None:
    """Write FINDINGS.md: what was run, the best configuration, gains with intervals, time and size."""
    from recsmith.experiments.findings import build_findings

    path = build_findings(directory)
    console.print(path.read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"wrote {path}")


# --------------------------------------------------------------------------- sweep
@app.command()
def sweep(sweep_file: Path = typer.Argument(..., help="Sweep file (YAML): base config, set, grid/points."),
          resume: bool = typer.Option(False, "--resume", help="Keep finished points, continue partial ones."),
          parallel: Optional[int] = typer.Option(None, "--parallel", min=1, help="Points trained at once."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Train each point as N DDP processes (torchrun)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the points; run nothing.")) -> None:
    """Train every point of a sweep (one run dir each), then write sweep_summary.csv/json and sweep_impact.png."""
    from recsmith.experiments.sweep import Sweep

    plan = Sweep(sweep_file, parallel, nproc)
    if dry_run:
        for point in plan.points:
            console.print(f"{point.id}: {point.overrides}", highlight=False)
        console.print(f"{len(plan.points)} points valid; output {plan.output}")
        return
    code = plan.run(resume, echo=lambda text: console.print(text, highlight=False))
    console.print(f"wrote {plan.output / 'sweep_summary.csv'}; `recsmith report {plan.output}` for the report")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- chain
@chain_app.command("validate")
def chain_validate(chain: Path = typer.Argument(..., help="Chain file (YAML)."),
                   set_: Optional[List[str]] = SetOption) -> None:
    """Check every experiment of a chain and that locked fields agree; print each diff from the base."""
    from recsmith.config.diff import flatten
    from recsmith.config.loader import get_dotted
    from recsmith.experiments.chain import diff_from_base, load_chain

    resolved = load_chain(chain, _overrides(set_))
    base = resolved.base.model_dump(mode="json")
    console.print(f"[bold]chain {resolved.spec.name}[/]: {len(resolved.experiments)} experiments, all valid")
    console.print("locked fields (identical in every experiment):")
    for key in resolved.spec.locked_fields:
        value = get_dotted(base, key)
        leaves = flatten(value, f"{key}.") if isinstance(value, dict) else {key: value}
        for leaf, leaf_value in leaves.items():
            console.print(f"  [green]✓[/] {leaf}: {leaf_value!r}", highlight=False)
    for exp in resolved.experiments:
        console.print(f"\n[bold]{exp.id}[/] {exp.description}")
        for key, before, after in diff_from_base(resolved, exp):
            console.print(f"  {key}: {before!r} → {after!r}", highlight=False)


@chain_app.command("run")
def chain_run(chain: Path = typer.Argument(..., help="Chain file (YAML)."),
              output: Optional[Path] = typer.Option(None, "--output", help="Output dir (default from the chain)."),
              resume: bool = typer.Option(False, "--resume", help="Skip finished experiments, continue partial ones."),
              skip: Optional[str] = typer.Option(None, "--skip", help="Comma-separated ids to skip."),
              only: Optional[str] = typer.Option(None, "--only", help="Comma-separated ids to run alone."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Print commands and diffs; run nothing."),
              timeout: float = typer.Option(6 * 3600, "--timeout", min=1, help="Per-experiment limit, seconds."),
              seeds: Optional[str] = typer.Option(
                  None, "--seeds", help="Repeat the chain per training seed: a count (3) or a list (1,2,3)."),
              nproc: int = typer.Option(1, "--nproc", min=1, help="Train each experiment as N DDP processes "
                                        "(torchrun on this machine; data.batch_size stays the global batch)."),
              set_: Optional[List[str]] = SetOption) -> None:
    """Run a chain's experiments in order, then write summary.csv/json and delta_analysis.txt."""
    from recsmith.experiments.chain import load_chain
    from recsmith.experiments.runner import ChainRunner
    from recsmith.experiments.seeds import parse_seeds

    resolved = load_chain(chain, _overrides(set_), output)
    selected = resolved.select(_ids(only), _ids(skip))
    runner = ChainRunner(resolved, console, timeout, nproc)
    if seeds is not None:
        seed_list = parse_seeds(seeds, resolved.base.runtime.seed)
        raise typer.Exit(runner.run_seeds(selected, resume, seed_list, dry_run))
    if dry_run:
        runner.dry_run(selected, resume)
        return
    raise typer.Exit(runner.run(selected, resume))


@chain_app.command("summarize")
def chain_summarize(chain: Path = typer.Argument(..., help="Chain file (YAML)."),
                    output: Optional[Path] = typer.Option(None, "--output", help="The chain's output dir."),
                    seeds: Optional[str] = typer.Option(None, "--seeds", help="As given to chain run --seeds."),
                    set_: Optional[List[str]] = SetOption) -> None:
    """Rebuild summary.csv/json and delta_analysis.txt from the run dirs (per seed, and across)."""
    from recsmith.experiments.chain import load_chain
    from recsmith.experiments.seeds import parse_seeds, with_seed, write_seed_summary
    from recsmith.experiments.summary import build_summary, write_summary

    resolved = load_chain(chain, _overrides(set_), output)
    seed_list = parse_seeds(seeds, resolved.base.runtime.seed) if seeds is not None else []
    for each in [with_seed(resolved, seed) for seed in seed_list] or [resolved]:
        for path in write_summary(each, build_summary(each)):
            console.print(f"wrote {path}")
    if seed_list:
        for path in write_seed_summary(resolved, seed_list):
            console.print(f"wrote {path}")


# ---------------------------------------------------------------------------- data
@data_app.command("prepare")
def data_prepare(config: Path = typer.Argument(..., help="Experiment config naming the data."),
                 set_: Optional[List[str]] = SetOption,
                 max_bad_rows: Optional[float] = typer.Option(
                     None, "--max-bad-rows", min=0.0, max=1.0,
                     help="Share of malformed raw rows tolerated (default data.max_bad_rows, 0.001).")) -> None:
    """Prepare (or find in the cache) the dataset a config uses; print its summary."""
    from recsmith.config.loader import load_experiment
    from recsmith.data.sources import resolve_dataset

    overrides = _overrides(set_)
    if max_bad_rows is not None:
        overrides["data.max_bad_rows"] = max_bad_rows
    cfg = load_experiment(config, overrides)
    with Progress(TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("data", total=None)
        path = resolve_dataset(cfg.data, lambda done, total: progress.update(task, completed=done, total=total))
    data_info(path)


@features_app.command("materialize")
def features_materialize(run_dir: Path = typer.Argument(..., help="A sequence run dir (its dataset is written)."),
                         store: str = typer.Option(DEFAULT_STORE, "--store",
                                                   help="sqlite:///PATH.db (embedded) or redis://HOST:PORT/DB.")) -> None:
    """Write a run's users and items into the online store as a new version, then switch to it."""
    from recsmith.online.materialize import dataset_of_run, materialize
    from recsmith.online.store import open_store

    dataset = dataset_of_run(run_dir)
    opened = open_store(store)
    try:
        with _row_progress("materializing") as progress:
            task = progress.add_task("records", total=None)
            manifest = materialize(dataset, opened, source=str(run_dir.resolve()),
                                   progress=lambda done, total: progress.update(task, completed=done, total=total))
    finally:
        opened.close()
    console.print(f"{store}: version {manifest['version']}: {manifest['users']:,} users, {manifest['items']:,} items, "
                  f"{manifest['events']:,} events from {manifest['dataset']}", highlight=False)


@data_app.command("join")
def data_join(definition: Path = typer.Argument(..., help="Join definition (YAML): the four logs and the rules."),
              engine: Optional[str] = typer.Option(None, "--engine", help="duckdb (default) or spark."),
              output: Optional[Path] = typer.Option(None, "--output", help="Output Parquet (default from the definition).")) -> None:
    """Join impression, click, conversion and feature logs into labelled samples (Parquet)."""
    from recsmith.data.join import run_join

    report = run_join(definition, engine=engine, output=output)
    counts = report.to_dict()
    console.print(f"{counts['rows_out']:,} samples ({counts['clicked_impressions']:,} clicked, "
                  f"{counts['converted_impressions']:,} converted) on {counts['engine']} in {counts['seconds']:.1f}s")
    for key, value in counts.items():
        if isinstance(value, int) and key not in ("rows_out", "clicked_impressions", "converted_impressions"):
            console.print(f"  {key}: {value:,}")
    console.print(f"wrote {counts['output']} and {counts['report']}")


@data_app.command("info")
def data_info(path: Path = typer.Argument(..., help="A prepared dataset directory.")) -> None:
    """Print a dataset's fields, split sizes, label rates and (synthetic) oracle AUCs."""
    from recsmith.data.info import describe_dataset

    console.print(describe_dataset(path))


# ------------------------------------------------------------------------ registry
registry_app = typer.Typer(no_args_is_help=True, help="A local model registry: versions, stages, gated promotion.")
app.add_typer(registry_app, name="registry")
RegistryOption = typer.Option(None, "--registry", help="Registry root (default $RECSMITH_REGISTRY, else runs/registry).")
ReasonOption = typer.Option("", "--reason", help="Why (recorded in the history).")
UserOption = typer.Option(None, "--user", help="Who (default: the login name).")
MlflowOption = typer.Option(None, "--mlflow/--no-mlflow",
                            help="Mirror into MLflow's model registry (default $RECSMITH_REGISTRY_MLFLOW).")


def _mirror(registry, mlflow: Optional[bool]):
    from recsmith.serve.model_registry import MlflowMirror, mlflow_by_default

    return MlflowMirror(registry) if (mlflow_by_default() if mlflow is None else mlflow) else None


def _metric_text(version) -> str:
    valid, test = version.metric("valid"), version.metric("test")
    return (f"{version.primary_key}: valid {'n/a' if valid is None else f'{valid:.6f}'}, "
            f"test {'n/a' if test is None else f'{test:.6f}'}")


MinimumOption = typer.Option(None, "--min", help="An absolute bar on the test metrics, KEY=VALUE (repeat): a floor, "
                                                  "or a ceiling for lower-is-better metrics (logloss).")


def _minimums(items: Optional[List[str]]) -> dict[str, float]:
    bars = _overrides(items)
    bad = [f"{key}={value!r}" for key, value in bars.items() if isinstance(value, bool) or
           not isinstance(value, (int, float))]
    if bad:
        raise ConfigError(f"--min expects KEY=NUMBER, got {', '.join(bad)}")
    return {key: float(value) for key, value in bars.items()}


@registry_app.command("add")
def registry_add(name: str = typer.Argument(..., help="Model name."),
                 run_dir: Path = typer.Argument(..., help="A finished ranking run directory."),
                 stage: str = typer.Option("staging", "--stage", help="staging, or production when there is none."),
                 minimum: Optional[List[str]] = MinimumOption,
                 reason: str = ReasonOption, user: Optional[str] = UserOption,
                 registry: Optional[Path] = RegistryOption, mlflow: Optional[bool] = MlflowOption) -> None:
    """Bundle a finished run as the next version of NAME."""
    from recsmith.serve.model_registry import ModelRegistry

    reg = ModelRegistry(registry)
    mirror = _mirror(reg, mlflow)  # MLflow missing fails before anything is written
    version = reg.add(name, run_dir, stage=stage, reason=reason, user=user, minimums=_minimums(minimum))
    console.print(f"{name} v{version.version} ({version.stage}) · {_metric_text(version)} · {version.path}",
                  highlight=False)
    if mirror:
        info = mirror.add(version)
        console.print(f"MLflow: registered model {name} version {info['model_version']} ({mirror.uri})",
                      highlight=False)


@registry_app.command("list")
def registry_list(name: Optional[str] = typer.Argument(None, help="One model (default: all)."),
                  registry: Optional[Path] = RegistryOption) -> None:
    """Every version: stage, primary metric on valid and test, config hash, run dir."""
    from rich.table import Table

    from recsmith.serve.model_registry import ModelRegistry

    reg = ModelRegistry(registry)
    table = Table(title=f"model registry {reg.root}")
    for column in ("name", "version", "stage", "primary metric", "valid", "test", "config", "created", "run dir"):
        table.add_column(column, justify="right" if column in ("version", "valid", "test") else "left")
    for model in [name] if name else reg.names():
        for v in reg.versions(model):
            valid, test = v.metric("valid"), v.metric("test")
            table.add_row(v.name, f"v{v.version}", v.stage, v.primary_key or "",
                          "" if valid is None else f"{valid:.6f}", "" if test is None else f"{test:.6f}",
                          str(v.metadata.get("config_hash", ""))[:8],
                          str(v.metadata.get("created") or v.metadata.get("registered", "")),
                          str(v.metadata.get("run_dir", "")))
    console.print(table)


@registry_app.command("promote")
def registry_promote(name: str = typer.Argument(..., help="Model name."),
                     version: str = typer.Argument(..., help="Version: 3 or v3."),
                     to: str = typer.Option("production", "--to", help="production or staging."),
                     force: bool = typer.Option(False, "--force", help="Promote even if the metric gate says no."),
                     tolerance: Optional[float] = typer.Option(
                         None, "--tolerance", help="How much worse than production the test primary metric may be "
                                                   "(default $RECSMITH_PROMOTE_TOLERANCE, else 0.001)."),
                     minimum: Optional[List[str]] = MinimumOption,
                     reason: str = ReasonOption, user: Optional[str] = UserOption,
                     registry: Optional[Path] = RegistryOption, mlflow: Optional[bool] = MlflowOption) -> None:
    """Move a version to production (gated on its test primary metric; the old one is archived) or staging."""
    from recsmith.serve.model_registry import ModelRegistry

    reg = ModelRegistry(registry)
    mirror = _mirror(reg, mlflow)
    promoted = reg.promote(name, version, to=to, force=force, reason=reason, user=user, tolerance=tolerance,
                           minimums=_minimums(minimum))
    event = reg.history(name)[-1] if to != "production" else \
        next(e for e in reversed(reg.history(name)) if e["action"] == "promote")
    console.print(f"{name} v{promoted.version} → {promoted.stage} · {_metric_text(promoted)}", highlight=False)
    if event.get("gate"):
        console.print(f"gate: {event['gate']}", highlight=False)
    if event.get("production_version") is not None:
        console.print(f"{name} v{event['production_version']} → archived", highlight=False)
    if mirror:
        mirror.sync(name)


@registry_app.command("archive")
def registry_archive(name: str = typer.Argument(..., help="Model name."),
                     version: str = typer.Argument(..., help="Version: 3 or v3."),
                     reason: str = ReasonOption, user: Optional[str] = UserOption,
                     registry: Optional[Path] = RegistryOption, mlflow: Optional[bool] = MlflowOption) -> None:
    """Retire a version (its bundle stays, resolvable as NAME@vN)."""
    from recsmith.serve.model_registry import ModelRegistry

    reg = ModelRegistry(registry)
    mirror = _mirror(reg, mlflow)
    archived = reg.archive(name, version, reason=reason, user=user)
    console.print(f"{name} v{archived.version} → archived", highlight=False)
    if mirror:
        mirror.sync(name)


@registry_app.command("history")
def registry_history(name: str = typer.Argument(..., help="Model name."),
                     registry: Optional[Path] = RegistryOption) -> None:
    """Every stage change of NAME: when, who, what, why, forced or not."""
    from recsmith.serve.model_registry import ModelRegistry

    for e in ModelRegistry(registry).history(name):
        gate = f" [{e['gate']}]" if e.get("gate") else ""
        console.print(f"{e['when']}  {e['who']}  v{e['version']}: {e['from'] or '-'} → {e['to']}"
                      f"{' (forced)' if e['forced'] else ''}{gate}  {e['why']}", markup=False, highlight=False)


# ------------------------------------------------------------------------- monitor
MONITOR_P1_EXIT = 3  # 2 is every command's exit code for bad input, so a P1 alert gets its own


@app.command("monitor")
def monitor_command(
        reference: Path = typer.Option(..., "--reference", help="Prepared dataset the model was trained on."),
        current: Path = typer.Option(..., "--current", help="Prepared dataset, or raw rows: a Parquet file or a "
                                                             "directory of them (a request log)."),
        model: Optional[Path] = typer.Option(None, "--model", help="Run dir or bundle: score both sides, compare "
                                                                  "AUC / GAUC with its eval.json test metrics."),
        reference_split: str = typer.Option("train", "--reference-split", help="train, valid or test."),
        current_split: str = typer.Option("test", "--current-split", help="When --current is a dataset."),
        out: Path = typer.Option(Path("monitor"), "--out", help="Where the report goes."),
        max_rows: int = typer.Option(200_000, "--max-rows", min=1, help="Rows sampled per side (seeded).")) -> None:
    """Drift and health: PSI / KS / JS per feature, missing rates, calibration, AUC drop.
    Writes MONITOR_REPORT.md, monitor_report.html and monitor.json; exits 0 for OK or P2, 3 for P1."""
    from rich import box
    from rich.table import Table

    from recsmith.monitor.check import monitor
    from recsmith.monitor.report import write_monitor_report

    with console.status("monitoring"):
        report = monitor(reference, current, model, reference_split, current_split, max_rows)
        paths = write_monitor_report(report, out)
    drifted = report.drifted
    if drifted:
        table = Table(title=f"{len(drifted)} of {len(report.features)} features drifted", box=box.SIMPLE_HEAD)
        for column in ("feature", "kind", "PSI", "status", "KS D/JS", "missing ref→cur"):
            table.add_column(column, justify="right" if column in ("PSI", "KS D/JS") else "left",
                             no_wrap=column == "feature")
        for f in drifted:
            test = f.ks_statistic if f.kind == "dense" else f.js_divergence
            missing = "→".join("n/a" if m is None else f"{100 * m:.1f}%" for m in (f.missing_reference, f.missing_current))
            table.add_row(f.name, "dense" if f.kind == "dense" else "categ.", f"{f.psi:.4f}", f.status,
                          f"{test:.4f}", missing, style="red" if f.status == "major" else "yellow")
        console.print(table)
    else:
        top = max(report.features, key=lambda f: f.psi)
        console.print(f"no feature drifted (largest PSI {top.psi:.4f}, {top.name})")
    for drop in report.drops:
        console.print(f"{drop.metric}: run test {drop.baseline:.4f} → {drop.current:.4f} "
                      f"({round(-100 * drop.relative_drop, 2) + 0.0:+.2f}%) {drop.level}", highlight=False)
    colour = {"OK": "green", "P2": "yellow", "P1": "red"}[report.level]
    console.print(f"level [bold {colour}]{report.level}[/]" + (f": {report.reasons[0]}" if report.reasons else ""))
    for path in paths:
        console.print(f"wrote {path}")
    if report.level == "P1":
        raise typer.Exit(MONITOR_P1_EXIT)


# ------------------------------------------------------------------------- loop
loop_app = typer.Typer(no_args_is_help=True, help="The closed loop: retrain, gate, release in stages, monitor, roll back.")
app.add_typer(loop_app, name="loop")


@loop_app.command("simulate")
def loop_simulate(config: Path = typer.Argument(..., help="Loop config (YAML), e.g. configs/loop/simulate_7d.yaml."),
                  out: Path = typer.Option(Path("runs/loop"), "--out", help="The loop directory (state, logs, runs, "
                                                                            "registry, timeline)."),
                  overrides: Optional[List[str]] = SetOption) -> None:
    """Run the loop unattended on the synthetic funnel, day after day; rerun to resume after a crash.
    Writes timeline.html and summary.json in OUT."""
    from recsmith.loop.config import load_loop_config
    from recsmith.loop.simulate import Loop

    setup_logging()
    cfg, base = load_loop_config(config, _overrides(overrides))
    summary = Loop(cfg, base, out, progress=lambda text: console.print(text, highlight=False)).simulate()
    for release in summary["releases"]:
        console.print(f"v{release['version']}: {release['status']}, true uplift {release['true_uplift']:+.2%} "
                      f"({'good' if release['truly_good'] else 'bad'} by the oracle)", highlight=False)
    console.print(f"{summary['decisions_agreeing_with_oracle']} of {summary['decisions']} release decisions agree "
                  f"with the oracle; {summary['alerts']} alerts; {summary['seconds']} s", highlight=False)
    console.print(f"wrote {out / 'timeline.html'}")


@loop_app.command("step")
def loop_step(name: str = typer.Argument(..., help="monitor, train, gate or register."),
              day: int = typer.Option(..., "--day", min=0, help="The day."),
              out: Path = typer.Option(Path("runs/loop"), "--out", help="The loop directory.")) -> None:
    """Run one of a day's steps of an existing loop (a scheduler's unit of work); a step already done prints its
    recorded result and does nothing."""
    from recsmith.loop.config import LoopConfig
    from recsmith.loop.simulate import Loop
    from recsmith.loop.state import read_state

    setup_logging()
    state = read_state(out)
    loop = Loop(LoopConfig.model_validate(state["config"]), Path(state.get("base") or "."), out,
                progress=lambda text: console.print(text, highlight=False))
    result = loop.step(name, day)
    print(json.dumps(result, indent=2, default=str))


@loop_app.command("status")
def loop_status(out: Path = typer.Argument(Path("runs/loop"), help="A loop directory.")) -> None:
    """Where a loop stands: production, the release in flight, the steps done, the last decisions and alerts."""
    from recsmith.loop.state import read_state

    state = read_state(out)
    done = list(state["done"])
    production, release = state["production"] or {}, state["release"]
    console.print(f"{out}: {len(done)} steps done, the last {done[-1] if done else '(none)'}", highlight=False)
    console.print(f"production: v{production.get('version', '?')} (since day {production.get('since_day', '?')})",
                  highlight=False)
    if release:
        share = state["config"]["release"]["stages"][release["stage"]]["share"]
        console.print(f"release in flight: v{release['version']} at {share:.0%}", highlight=False)
    for finished in state["releases"][-5:]:
        last = finished["history"][-1]
        console.print(f"v{finished['version']}: {finished['status']} on day {last['day']}: {last['reason']}",
                      highlight=False, markup=False)
    for alert in state["alerts"][-5:]:
        console.print(alert["message"], highlight=False, markup=False)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except RecsmithError as exc:
        for line in str(exc).splitlines() or [str(exc)]:
            print(line if line.startswith(exc.kind) else f"{exc.kind}: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown command, missing argument
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
