"""`recsmith export`: a run's model as ONNX or TorchScript, inside a model bundle.

The exported graph is the model family's (its scorer's `export_graph()`): named inputs →
one [N] float32 probability per output, named after it. For the ranking family:
    sparse [N, F] int32 ids, dense [N, D] float32  →  each head, plus the funnel pair's
    composed `ctcvr` when the model has both heads (recsmith.tasks).
Raw rows are encoded before the graph by the bundle's fitted encoders (`features.json` +
`vocab.json`), the same code path that prepared the training data (the scorer's `encode`;
see docs/serving.md for doing it in another language). Every export is checked against
the PyTorch model on the test split and refused when any probability differs by more
than `PARITY_TOLERANCE`.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from recsmith.atomic import fsync_dir, fsync_tree, remove_stale, temp_prefix, write_error, write_json_atomic
from recsmith.errors import ConfigError, DataError
from recsmith.registry import Registry
from recsmith.config.loader import load_experiment
from recsmith.plugins import family_of
from recsmith.serve.bundle import run_dataset_dir
from recsmith.serve.scorer import Scorer
from recsmith.run_dir import RunDir

PARITY_TOLERANCE = 1e-5
EXPORT_FILE = "export.json"
STAGING = "partial"  # .OUT.partial<pid>.<host>.<random>: the bundle being written
EXPORTERS: Registry[Callable] = Registry("export format")
Runner = Callable[..., list[np.ndarray]]  # (the graph's inputs, in order) -> outputs in order


@EXPORTERS.register("onnx")
def export_onnx(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Runner:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(graph, example, str(path), input_names=graph.inputs, output_names=graph.outputs,
                      dynamic_shapes={name: {0: batch} for name in graph.inputs}, dynamo=True,
                      external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *arrays: session.run(graph.outputs, dict(zip(graph.inputs, arrays)))


@EXPORTERS.register("torchscript")
def export_torchscript(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Runner:
    """TorchScript (deprecated by PyTorch in favour of torch.export, still what many C++
    serving stacks load): a trace, which fits these models (no data-dependent control flow)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))

    @torch.inference_mode()
    def run(*arrays):
        return [t.numpy() for t in loaded(*(torch.from_numpy(a) for a in arrays))]

    return run


SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt"}
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime")}  # the optional extra `export`


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, parity_rows: int | None = None,
               batch_size: int = 8192) -> dict:
    """Write a bundle with the exported model into `out` (default RUN_DIR/export-FORMAT) and
    check parity on the test split; returns export.json's content."""
    exporter = EXPORTERS.get(fmt, "--format")
    missing = [m for m in NEEDS.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--format {fmt} needs {', '.join(missing)}: pip install 'recsmith[export]'")
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DataError(f"not a run directory (no config.yaml): {run.path}")
    out = Path(out) if out else run.path / f"export-{fmt}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} already exists and is not empty")
    remove_stale(out, STAGING)  # staging dirs of killed exports
    # a staging dir of its own, so concurrent exports to one --out never share files (made
    # like mkdtemp, but with the usual permissions: the bundle is read by other users' services)
    staging = out.with_name(temp_prefix(out, STAGING) + secrets.token_hex(4))
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    try:
        cfg = load_experiment(run.config)
        scorer = family_of(cfg).export_source(run, staging)
        if not hasattr(scorer, "export_graph"):
            raise ConfigError(f"{run.path}: model family '{cfg.model.family}' has no exportable graph")
        graph = scorer.export_graph()
        inputs = scorer.export_inputs(run_dataset_dir(run), parity_rows)
        example = tuple(torch.from_numpy(a[:2].copy()) for a in inputs)
        model_file = staging / f"model{SUFFIX[fmt]}"
        run_exported = exporter(graph, example, model_file)
        worst = parity(scorer, run_exported, inputs, batch_size)
        report = {"format": fmt, "file": model_file.name,
                  "inputs": {name: list(a.shape[1:]) for name, a in zip(graph.inputs, inputs)},
                  "outputs": scorer.outputs, "parity_rows": len(inputs[0]), "max_abs_diff": worst,
                  "tolerance": PARITY_TOLERANCE, "torch": torch.__version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if max(worst.values()) > PARITY_TOLERANCE:
            raise DataError(f"exported {fmt} model differs from PyTorch by {max(worst.values()):.2e} "
                            f"(> {PARITY_TOLERANCE}) on the test split: {worst}")
        write_json_atomic(staging / EXPORT_FILE, report)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**report, "out": str(out)}


def publish(staging: Path, out: Path) -> None:
    """Rename the finished bundle to `out` in one step (over an empty dir, never a full one)."""
    fsync_tree(staging)
    try:
        os.rename(staging, out)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise ConfigError(f"--out: {out} was filled while this export ran (another export to the same --out "
                          "finished first); it holds that export's complete bundle and nothing of this one: "
                          "export again with another --out to keep both") from None
    fsync_dir(out.parent)


def onnx_runner(bundle: Path) -> Runner:
    """ONNX Runtime on the model a `recsmith export --format onnx` bundle holds (checked
    against PyTorch on the test split when it was exported), with the torch thread count."""
    report_file = bundle / EXPORT_FILE
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    if report.get("format") != "onnx":
        raise ConfigError(f"--backend onnx serves bundles made by `recsmith export RUN --format onnx`; {bundle} "
                          "is not one (export it, then serve the export dir)")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("--backend onnx needs onnxruntime: pip install 'recsmith[export]'")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    session = onnxruntime.InferenceSession(str(bundle / report["file"]), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *arrays: session.run(report["outputs"], dict(zip(names, arrays)))


def parity(scorer: Scorer, run_exported: Runner, inputs: tuple[np.ndarray, ...], batch_size: int) -> dict[str, float]:
    """The largest absolute difference per output between PyTorch and the exported model."""
    worst = dict.fromkeys(scorer.outputs, 0.0)
    for start in range(0, len(inputs[0]), batch_size):
        batch = tuple(np.ascontiguousarray(a[start:start + batch_size]) for a in inputs)
        reference = scorer.predict_encoded(*batch)
        for name, values in zip(scorer.outputs, run_exported(*batch)):
            worst[name] = max(worst[name], float(np.abs(np.asarray(values, np.float64) - reference[name]).max()))
    return worst
