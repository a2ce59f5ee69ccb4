"""Does data-parallel training pay on this machine? Two DDP ranks with 1 thread each (gloo,
torchrun) against one process with 2 threads, on the real training path. A script, not a
test:

    python bench/ddp.py [--structures E0a,E3] [--rounds 3] [--steps 100] [--rows 1000000]
                        [--sharding column_wise]

For each structure (global batch 1024, fp32) every round times one process (2 threads),
then 2 ranks × 1 thread, each a fresh process that warms up before it times `--steps`
optimizer steps of Trainer.train_step on the prepared 1M-row synthetic funnel (the ranks
start timing together after a barrier). Samples/s are medians over rounds; the ratio is the
median of the per-round ratios (the machine's speed drifts between runs). It waits for an
idle machine first and writes bench/ddp.json. With `--sharding TYPE` (TorchRec installed:
scripts/install_torchrec.sh) each round also times the 2 ranks with the table sharded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the structures, configs and machine-load helpers)

REPO = Path(__file__).resolve().parents[1]


def worker(structure: str, rows: int, steps: int, warmup: int, sharding: str) -> None:
    """Inside one process of a measurement: build the real path, time it, print (rank 0)."""
    from recsmith.data.batches import TrainStream
    from recsmith.data.schema import DatasetSchema
    from recsmith.data.sources import resolve_dataset
    from recsmith.families.ranking.setup import load_training_data, ranking_loss
    from recsmith.models.ranking import build_model
    from recsmith.run_dir import RunDir
    from recsmith.train.distributed import from_environment
    from recsmith.train.precision import resolve_precision
    from recsmith.train.trainer import Trainer

    cfg = throughput.experiment_config(structure, rows, {"runtime.amp": False, "embedding.sharding": sharding})
    dist = from_environment("cpu")
    dataset_dir = resolve_dataset(cfg.data)
    schema = DatasetSchema.load(dataset_dir)
    train, _ = load_training_data(cfg, dataset_dir, schema, with_valid=False)
    stream = TrainStream(train, cfg.data.batch_size, seed=cfg.runtime.seed, label=schema.tasks[0].label)
    device = torch.device("cpu")
    trainer = Trainer(cfg, RunDir(tempfile.mkdtemp()), build_model(schema, cfg), ranking_loss(cfg, schema.task_specs),
                      stream, None, device, resolve_precision(False, device), dist)
    if trainer.sharded:
        trainer.sharded.load(trainer.model)  # what fit() does first
    batches = iter(trainer.stream)
    for _ in range(warmup):
        trainer.train_step(next(batches))
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    dist.barrier()
    seconds = time.perf_counter() - started
    if dist.is_main:
        print(json.dumps({"samples_per_s": steps * cfg.data.batch_size / seconds, "world_size": dist.world_size,
                          "threads": torch.get_num_threads()}))


def measure(structure: str, ranks: int, args, sharding: str = "none") -> float:
    """Samples/s of one fresh measurement with `ranks` processes sharing the cores."""
    threads = max(1, (os.cpu_count() or 1) // ranks)
    inner = [str(Path(__file__).resolve()), "--worker", "--structures", structure, "--rows", str(args.rows),
             "--steps", str(args.steps), "--warmup", str(args.warmup), "--sharding", sharding]
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *inner]
               if ranks > 1 else [sys.executable, *inner])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, cwd=REPO).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", default="E0a,E3")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sharding", default="none", help="also time 2 ranks with embedding.sharding=TYPE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "ddp.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.structures, args.rows, args.steps, args.warmup, args.sharding)
        return
    from recsmith.data.sources import resolve_dataset

    structures = args.structures.split(",")
    resolve_dataset(throughput.experiment_config(structures[0], args.rows).data)  # prepared once, outside timing
    idle = throughput.wait_for_idle()
    methods = [("one_process_2_threads", 1, "none"), ("two_ranks_1_thread", 2, "none")]
    if args.sharding != "none":
        methods.append((f"two_ranks_{args.sharding}", 2, args.sharding))
    raw = {s: {label: [] for label, _, _ in methods} for s in structures}
    for round_index in range(args.rounds):
        for structure in structures:
            for label, ranks, sharding in methods:
                with throughput.CpuWatch() as watch:
                    rate = measure(structure, ranks, args, sharding)
                raw[structure][label].append({"samples_per_s": rate, "other_cpu_share": watch.other_share})
                print(f"round {round_index + 1} {structure} {label:22s} {rate:>10,.0f} samples/s", flush=True)
    table = []
    for structure, runs in raw.items():
        row = {"structure": structure,
               **{label: statistics.median(r["samples_per_s"] for r in values) for label, values in runs.items()}}
        for label, _, _ in methods[1:]:  # each 2-rank method over one process, per round
            ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(runs["one_process_2_threads"], runs[label])]
            name = "ddp_over_single" if label == "two_ranks_1_thread" else f"{args.sharding}_over_single"
            row.update({name: statistics.median(ratios), f"{name}_range": [min(ratios), max(ratios)]})
        table.append(row)
    report = {"rows": args.rows, "batch_size": 1024, "steps": args.steps, "rounds": args.rounds, "precision": "fp32",
              "sharding": args.sharding,
              "torch": torch.__version__, "cpus": os.cpu_count(), "cpu": throughput.cpu_description(),
              "idle_share_before": idle, "results": table, "raw": raw}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sharded = args.sharding != "none"
    print(f"{'structure':<10}{'1 proc x 2 threads':>20}{'2 ranks x 1 thread':>20}{'DDP / single':>14}"
          + (f"{'2 ranks ' + args.sharding:>24}{'sharded / single':>18}" if sharded else ""))
    for row in table:
        print(f"{row['structure']:<10}{row['one_process_2_threads']:>20,.0f}{row['two_ranks_1_thread']:>20,.0f}"
              f"{row['ddp_over_single']:>13.2f}×"
              + (f"{row[f'two_ranks_{args.sharding}']:>24,.0f}{row[f'{args.sharding}_over_single']:>17.2f}×"
                 if sharded else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
