"""Training throughput on 2 CPU cores: recsmith's real data path against the bare step
(the ceiling) and against peer libraries. A script, not a test:

    python bench/throughput.py [--rows 1000000] [--steps 150] [--rounds 3] [--peers]

For each structure of the chain (E0a DeepFM, E2 shared-bottom + ESMM, E3 MMoE, E4 PLE
homogeneous, E5 PLE heterogeneous) on the synthetic funnel (26 categorical fields,
embedding dim 8, batch 1024) it measures, interleaved round by round after a warm-up:

  recsmith  samples/s through the real path: the prepared dataset dir → load_split →
            TrainStream batches → Trainer.train_step (evaluation off);
  ceiling   the same Trainer.train_step (forward, backward, both optimizer steps) on
            batches already sitting in memory as tensors: no input pipeline at all;
  peers     (--peers; `pip install -e '.[bench]'`) the same model trained through
            torch-rechub's and DeepCTR-Torch's own documented data paths on the same rows,
            read from the same Parquet file (see bench/peers.py).

`--precisions fp32,bf16` times recsmith and its ceiling once per training precision
(`runtime.amp`), interleaved in the same rounds, and prints them side by side with the
bf16 / fp32 ratio of the real path: the measurement `runtime.amp: auto` rests on
(recsmith.train.precision.MEASURED_FASTER). The JSON records the CPU's model, its
SIMD / bf16 flags and its hardware class, since the answer differs between them.

It waits for an idle machine first and records, for every measurement, the CPU share
other processes took meanwhile (two PyTorch jobs on 2 cores slow each other 20-50×, so a
contended figure is worthless). Peak RSS of the real path is measured in a child process
per structure. Within a round a structure's methods take turns in blocks of `--block`
steps until each has run `--steps`, so the machine's drift (10-20% between rounds here)
falls on all of them alike. Samples/s are medians over rounds; every ratio is the median
of the per-round ratios, with its range in the JSON. The table is printed and written to
bench/throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from recsmith.env_info import busy_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = {
    "E0a": "E0a_deepfm_st_ctr",
    "E2": "E2_deepfm_shared_esmm",
    "E3": "E3_deepfm_mmoe_esmm",
    "E4": "E4_deepfm_ple_lite_homo_esmm",
    "E5": "E5_deepfm_ple_lite_hetero_esmm",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- machine load
def _own_ticks() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime


class CpuWatch:
    """The share of all cores that processes other than this one used while it ran."""

    def __enter__(self):
        self.wall, self.busy, self.own = time.perf_counter(), busy_cpu_seconds(), _own_ticks()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.wall
        other = (busy_cpu_seconds() - self.busy) - (_own_ticks() - self.own) / CLOCK_TICKS
        self.other_share = max(0.0, other / (seconds * os.cpu_count()))
        self.seconds = seconds


def wait_for_idle(threshold: float = 0.05, patience: float = 300.0) -> float:
    """Block until other processes use < threshold of the CPUs over 2 s (or patience runs out)."""
    deadline = time.time() + patience
    while True:
        with CpuWatch() as watch:
            time.sleep(2.0)
        if watch.other_share < threshold or time.time() > deadline:
            return watch.other_share
        print(f"waiting for an idle machine (others use {watch.other_share:.0%})", flush=True)


# --------------------------------------------------------------------- recsmith
AMP_SETTING = {"fp32": False, "bf16": "bf16", "fp16": "fp16"}  # --precisions → runtime.amp
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def cpu_description() -> dict:
    """The CPU's model, the flags that decide how fast each precision runs, its class."""
    from recsmith.env_info import _cpu_model
    from recsmith.train.precision import hardware_class

    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    return {"model": _cpu_model(), "flags": {f: f in flags for f in CPU_FLAGS},
            "hardware_class": hardware_class(torch.device("cpu"))}


def experiment_config(exp_id: str, rows: int, overrides: dict | None = None):
    from recsmith.config.loader import load_experiment

    path = REPO / "configs" / "experiments" / "mtl_funnel" / f"{STRUCTURES[exp_id]}.yaml"
    return load_experiment(path, {"data.synthetic.rows": rows, **(overrides or {})})


def build_trainer(cfg, dataset_dir: Path):
    """A Trainer on the real data path (evaluation never called) and its stream."""
    from recsmith.data.batches import TrainStream
    from recsmith.data.schema import DatasetSchema
    from recsmith.families.ranking.setup import load_training_data, ranking_loss
    from recsmith.models.ranking import build_model
    from recsmith.run_dir import RunDir
    from recsmith.train.precision import resolve_precision
    from recsmith.train.trainer import Trainer

    schema = DatasetSchema.load(dataset_dir)
    train, _ = load_training_data(cfg, dataset_dir, schema, with_valid=False)
    model = build_model(schema, cfg)
    stream = TrainStream(train, cfg.data.batch_size, seed=cfg.runtime.seed, label=schema.tasks[0].label)
    device = torch.device("cpu")
    trainer = Trainer(cfg, RunDir(tempfile.mkdtemp()), model, ranking_loss(cfg, schema.task_specs), stream,
                      None, device, resolve_precision(cfg.runtime.amp, device))
    return trainer, stream


def time_interleaved(methods: dict, steps: int, block: int) -> dict[str, tuple[float, float]]:
    """{name: (samples/s, largest CPU share other processes took)} over `steps` calls of each
    method's step(batch), run in alternating blocks of `block` steps, so that the machine's
    drift (10-20% between rounds here) falls on every method alike."""
    seconds, other = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0.0)
    for done in range(0, steps, block):
        for name, (step, batches) in methods.items():
            with CpuWatch() as watch:
                for _ in range(min(block, steps - done)):
                    step(next(batches))
            seconds[name] += watch.seconds
            other[name] = max(other[name], watch.other_share)
    return {name: (steps * 1024 / seconds[name], other[name]) for name in methods}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child started by a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_child(exp_id: str, rows: int, steps: int) -> float:
    """Peak RSS (MB) of a fresh process training `steps` steps on the real path."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import throughput as t;"
            f"from recsmith.data.sources import resolve_dataset;"
            f"cfg = t.experiment_config({exp_id!r}, {rows});"
            f"trainer, stream = t.build_trainer(cfg, resolve_dataset(cfg.data)); batches = iter(stream);"
            f"[trainer.train_step(next(batches)) for _ in range({steps})];"
            f"print(t.peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=20, help="steps per method before the next one takes over")
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    parser.add_argument("--precisions", default="", help="e.g. fp32,bf16: time each training precision "
                        "(runtime.amp) side by side; default: the config's own runtime.amp")
    parser.add_argument("--peers", action="store_true", help="also time torch-rechub and DeepCTR-Torch")
    parser.add_argument("--set", action="append", default=[], help="config override for recsmith")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "throughput.json")
    args = parser.parse_args()

    from recsmith.config.loader import parse_overrides
    from recsmith.data.sources import resolve_dataset

    overrides = parse_overrides(args.set)
    structures = [s for s in args.structures.split(",") if s]
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in precisions if p not in AMP_SETTING]
    if unknown:
        parser.error(f"--precisions: unknown {unknown} (choose from {', '.join(AMP_SETTING)})")
    variants = {p: {**overrides, "runtime.amp": AMP_SETTING[p]} for p in precisions} or {"": overrides}
    dataset_dir = resolve_dataset(experiment_config(structures[0], args.rows, overrides).data)
    peers = None
    if args.peers:
        sys.path.insert(0, str(REPO / "bench"))
        import peers as peer_module

        peers = peer_module
    runners = {}
    for exp_id in structures:
        runners[exp_id] = {}
        for label, settings in variants.items():
            cfg = experiment_config(exp_id, args.rows, settings)
            trainer, stream = build_trainer(cfg, dataset_dir)
            real = iter(stream)
            resident = [next(real) for _ in range(64)]  # the ceiling cycles through these
            suffix = f"_{label}" if label else ""
            runners[exp_id][f"recsmith{suffix}"] = (trainer.train_step, real)
            runners[exp_id][f"ceiling{suffix}"] = (trainer.train_step, _cycle(resident))
        if peers:
            for name, (step, batches) in peers.build(exp_id, dataset_dir, cfg).items():
                runners[exp_id][name] = (step, batches)
        for name, (step, batches) in runners[exp_id].items():  # warm-up
            for _ in range(args.warmup):
                step(next(batches))

    idle_share = wait_for_idle()
    results = {exp_id: {name: [] for name in methods} for exp_id, methods in runners.items()}
    for round_index in range(args.rounds):
        for exp_id, methods in runners.items():
            for name, (rate, other) in time_interleaved(methods, args.steps, args.block).items():
                results[exp_id][name].append({"samples_per_s": rate, "other_cpu_share": other})
                print(f"round {round_index + 1} {exp_id:4s} {name:14s} {rate:>10,.0f} samples/s "
                      f"(others {other:.0%})", flush=True)

    table = []
    for exp_id, methods in results.items():
        row = {"structure": exp_id, "config": STRUCTURES[exp_id],
               "peak_rss_mb": peak_rss_child(exp_id, args.rows, 100)}
        for name, runs in methods.items():
            row[name] = statistics.median(r["samples_per_s"] for r in runs)
            row[f"{name}_max_other_cpu_share"] = max(r["other_cpu_share"] for r in runs)
        # ratios paired by round: the machine's speed drifts between rounds
        for label in variants:
            suffix = f"_{label}" if label else ""
            _paired_ratio(row, methods, f"recsmith{suffix}", f"ceiling{suffix}", f"ratio_to_ceiling{suffix}")
        mine = "recsmith" + (f"_{precisions[0]}" if precisions else "")
        for name in methods:
            if not name.startswith(("recsmith", "ceiling")):  # a peer, against the first precision
                _paired_ratio(row, methods, mine, name, f"ratio_to_{name}")
        if len(precisions) >= 2:
            first = precisions[0]
            for label in precisions[1:]:
                _paired_ratio(row, methods, f"recsmith_{label}", f"recsmith_{first}", f"{label}_over_{first}")
        table.append(row)
    report = {"rows": args.rows, "batch_size": 1024, "steps_per_measurement": args.steps, "block_steps": args.block,
              "rounds": args.rounds, "overrides": overrides, "precisions": precisions or None,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "cpu": cpu_description(), "machine": platform.platform(), "idle_share_before": idle_share,
              "results": table, "raw": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if len(precisions) >= 2:
        print_precision_table(table, precisions)
    else:
        print_table(table)
    print(f"CPU: {report['cpu']['model']} ({report['cpu']['hardware_class']}); wrote {args.out}")


def _paired_ratio(row: dict, methods: dict, mine: str, theirs: str, key: str) -> None:
    """Median and range of the per-round ratios mine / theirs."""
    ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(methods[mine], methods[theirs])]
    row[key], row[f"{key}_range"] = statistics.median(ratios), [min(ratios), max(ratios)]


def _cycle(items):
    while True:
        yield from items


def print_precision_table(table: list[dict], precisions: list[str]) -> None:
    header = f"{'structure':<10}" + "".join(f"{p + ' real/s':>14}{p + ' ceiling/s':>16}{'vs ceiling':>12}"
                                            for p in precisions)
    header += "".join(f"{p + ' / ' + precisions[0]:>15}" for p in precisions[1:])
    print(header)
    for row in table:
        line = f"{row['structure']:<10}" + "".join(
            f"{row['recsmith_' + p]:>14,.0f}{row['ceiling_' + p]:>16,.0f}{row['ratio_to_ceiling_' + p]:>12.1%}"
            for p in precisions)
        line += "".join(f"{row[p + '_over_' + precisions[0]]:>14.2f}×" for p in precisions[1:])
        print(line)


def print_table(table: list[dict]) -> None:
    peers = sorted({k.removeprefix("ratio_to_") for row in table for k in row
                    if k.startswith("ratio_to_") and k != "ratio_to_ceiling" and not k.endswith("_range")})
    header = f"{'structure':<10}{'recsmith/s':>12}{'ceiling/s':>12}{'vs ceiling':>12}{'RSS MB':>8}"
    header += "".join(f"{name + '/s':>17}{'vs ' + name:>17}" for name in peers)
    print(header)
    for row in table:
        line = (f"{row['structure']:<10}{row['recsmith']:>12,.0f}{row['ceiling']:>12,.0f}"
                f"{row['ratio_to_ceiling']:>12.1%}{row['peak_rss_mb']:>8.0f}")
        line += "".join(f"{row[name]:>17,.0f}{row['ratio_to_' + name]:>16.2f}×" if name in row
                        else f"{'n/a':>17}{'n/a':>17}" for name in peers)
        print(line)

if __name__ == "__main__":
    main()
