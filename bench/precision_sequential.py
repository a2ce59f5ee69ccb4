"""Training speed of the sequential models in fp32 and bf16 autocast: the other half of the
measurement `runtime.amp: auto` rests on (bench/throughput.py --precisions does the ranking
structures). A script, not a test:

    RECSMITH_DATA=../shared/data python bench/precision_sequential.py [--rounds 3] [--steps 60]

For each trained architecture of configs/base/ml100k_sequential.yaml (SASRec, GRU4Rec, NARM,
AvgPool with the softmax over all items; DIN with BCE on candidate rows, batch 1024 as in the
model chain) it builds the real training path (SequenceDataset → TrainStream →
Trainer.train_step, evaluation off) once per precision, then times them in alternating
blocks after a warm-up (bench/throughput.py's method: idle machine, others' CPU share
recorded, medians over rounds, ratios paired by round). Writes bench/precision_sequential.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the bench's timing helpers)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "base" / "ml100k_sequential.yaml"
ARCHITECTURES = {"sasrec": {}, "gru4rec": {}, "narm": {}, "avgpool": {},
                 "din": {"runtime.best_selection.primary_key": "auc_like", "data.batch_size": 1024}}


def build(architecture: str, amp) -> tuple:
    from recsmith.config.loader import load_experiment
    from recsmith.data.sources import resolve_dataset
    from recsmith.run_dir import RunDir
    from recsmith.train.precision import resolve_precision
    from recsmith.train.sequential import SequentialSetup
    from recsmith.train.trainer import Trainer

    cfg = load_experiment(BASE, {"model.sequential.architecture": architecture, "runtime.amp": amp,
                                 **ARCHITECTURES[architecture]})
    device = torch.device("cpu")
    setup = SequentialSetup(cfg, resolve_dataset(cfg.data), device)
    trainer = Trainer(cfg, RunDir(tempfile.mkdtemp()), setup.model, setup.loss_fn, setup.stream, None, device,
                      resolve_precision(cfg.runtime.amp, device))
    return trainer.train_step, iter(setup.stream), cfg.data.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "precision_sequential.json")
    args = parser.parse_args()

    runners, batch = {}, {}
    for arch in args.architectures.split(","):
        runners[arch] = {}
        for label, amp in (("fp32", False), ("bf16", "bf16")):
            step, batches, batch[arch] = build(arch, amp)
            for _ in range(args.warmup):
                step(next(batches))
            runners[arch][label] = (step, batches)
    idle = throughput.wait_for_idle()
    raw = {arch: {"fp32": [], "bf16": []} for arch in runners}
    for round_index in range(args.rounds):
        for arch, methods in runners.items():
            for label, (rate, other) in throughput.time_interleaved(methods, args.steps, args.block).items():
                rate *= batch[arch] / 1024  # time_interleaved counts 1024 rows a step
                raw[arch][label].append({"samples_per_s": rate, "other_cpu_share": other})
                print(f"round {round_index + 1} {arch:8s} {label} {rate:>10,.0f} rows/s (others {other:.0%})",
                      flush=True)
    table = []
    for arch, runs in raw.items():
        ratios = [b["samples_per_s"] / f["samples_per_s"] for f, b in zip(runs["fp32"], runs["bf16"])]
        table.append({"architecture": arch, "batch_size": batch[arch],
                      **{f"{label}_rows_per_s": statistics.median(r["samples_per_s"] for r in runs[label])
                         for label in runs},
                      "max_other_cpu_share": max(r["other_cpu_share"] for v in runs.values() for r in v),
                      "bf16_over_fp32": statistics.median(ratios), "bf16_over_fp32_range": [min(ratios), max(ratios)]})
    report = {"rounds": args.rounds, "steps_per_measurement": args.steps, "block_steps": args.block,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": throughput.cpu_description(),
              "idle_share_before": idle, "results": table, "raw": raw}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'model':<10}{'batch':>7}{'fp32 rows/s':>14}{'bf16 rows/s':>14}{'bf16 / fp32':>13}")
    for row in table:
        print(f"{row['architecture']:<10}{row['batch_size']:>7}{row['fp32_rows_per_s']:>14,.0f}"
              f"{row['bf16_rows_per_s']:>14,.0f}{row['bf16_over_fp32']:>12.2f}×")
    print(f"CPU: {report['cpu']['model']} ({report['cpu']['hardware_class']}); wrote {args.out}")


if __name__ == "__main__":
    main()
