"""recsmith vs RecBole 1.2.0 on MovieLens-100K, side by side, under the same wall-clock budget.

Protocol (both tools): every rating is an interaction; per user ordered by (timestamp, line
in u.data); leave-last-out (last item test, second-to-last valid); the last 50 items as
history; full ranking over all 1,682 items, history items not excluded; a same-second
rating may be in the history (RecBole's convention, so recsmith runs with
`data.options.history: order` here; its default, strict_time, is stricter). Budget: training
plus per-epoch (RecBole) or per-evaluation (recsmith) validation time; RecBole does not start
an epoch that would not fit, recsmith stops at the first step past the budget. Test metrics of
the best-validation state (NDCG@10).

    bash bench/recbole/setup_env.sh                   # once: RecBole in its own venv
    python bench/seq_peers.py --data ../shared/data/ml-100k --budget-seconds 900

Writes bench/seq_peers.json. Run it on an otherwise idle machine: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"SASRec": "sasrec", "GRU4Rec": "gru4rec", "NARM": "narm"}
SHOWN = ("hit@10", "ndcg@10", "mrr@10", "ndcg@20")


def run_recsmith(model: str, data: Path, budget: float, threads: int, workdir: Path, extra: list[str]) -> dict:
    run_dir = workdir / f"recsmith_{model}"
    settings = {"data.path": str(data), "data.options.history": "order", "model.sequential.architecture": MODELS[model],
                "runtime.max_train_seconds": budget, "runtime.num_threads": threads, **dict(s.split("=", 1) for s in extra)}
    command = [sys.executable, "-m", "recsmith", "train", str(REPO / "configs/base/ml100k_sequential.yaml"),
               "--run-dir", str(run_dir)] + [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "RECSMITH_CACHE": str(workdir / "cache"), "RECSMITH_NO_PROGRESS": "1",
           "RECSMITH_TRACKER": str(workdir / "tracker.csv")}
    subprocess.run(command, check=True, env=env, cwd=REPO)
    result = json.loads((run_dir / "eval.json").read_text())
    test = result["test"]
    epochs = result["epochs"]
    train_only = result["train_seconds"] - result["valid_seconds"]
    return {"tool": "recsmith", "model": model, "epochs": epochs, "used_seconds": result["train_seconds"],
            "train_seconds_per_epoch": train_only / epochs, "stop_reason": result["stop_reason"],
            "parameters": result["parameters"],
            "test": {"hit@10": test["hr_10"], "ndcg@10": test["ndcg_10"], "mrr@10": None, "ndcg@20": test["ndcg_20"],
                     "mrr": test["mrr"], "hit@20": test["hr_20"], "hit@5": test["hr_5"], "ndcg@5": test["ndcg_5"]}}


def run_recbole(model: str, data: Path, budget: float, threads: int, workdir: Path, python: Path) -> dict:
    out = workdir / f"recbole_{model}.json"
    subprocess.run([str(python), str(REPO / "bench/recbole/run_recbole.py"), "--data", str(data), "--model", model,
                    "--budget-seconds", str(budget), "--max-length", "50", "--batch-size", "2048",
                    "--threads", str(threads), "--out", str(out), "--workdir", str(workdir / f"recbole_{model}")],
                   check=True, cwd=REPO)
    result = json.loads(out.read_text())
    per_epoch = result["train_seconds_per_epoch"]
    return {**result, "tool": "RecBole 1.2.0", "train_seconds_per_epoch": sum(per_epoch) / len(per_epoch)}


def table(rows: list[dict]) -> str:
    head = f"{'tool':<14}{'model':<9}{'epochs':>8}{'s/epoch':>9}{'used s':>8}" + "".join(f"{m:>10}" for m in SHOWN)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r['test'][m]:>10.4f}" if r["test"].get(m) is not None else f"{'–':>10}" for m in SHOWN)
        lines.append(f"{r['tool']:<14}{r['model']:<9}{r['epochs']:>8.2f}{r['train_seconds_per_epoch']:>9.2f}"
                     f"{r['used_seconds']:>8.0f}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ml-100k folder")
    parser.add_argument("--budget-seconds", type=float, default=900.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recbole-python", type=Path, default=REPO / ".venv-recbole/bin/python")
    parser.add_argument("--skip-recbole", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="extra recsmith overrides KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench/seq_peers.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="seq_peers_"))
    rows = []
    for model in args.models:
        rows.append(run_recsmith(model, args.data.resolve(), args.budget_seconds, args.threads, workdir, args.set))
        if not args.skip_recbole:
            rows.append(run_recbole(model, args.data.resolve(), args.budget_seconds, args.threads, workdir,
                                    args.recbole_python))
        print(table(rows), flush=True)
        save(args, rows)  # after every model: a long run that stops early keeps what it measured
    print()
    for model in args.models:
        ours = next(r for r in rows if r["model"] == model and r["tool"] == "recsmith")
        theirs = next((r for r in rows if r["model"] == model and r["tool"] != "recsmith"), None)
        if theirs:
            print(f"{model}: RecBole s/epoch ÷ recsmith s/epoch = "
                  f"{theirs['train_seconds_per_epoch'] / ours['train_seconds_per_epoch']:.1f}×; NDCG@10 at the end of "
                  f"the {args.budget_seconds:.0f} s budget: recsmith {ours['test']['ndcg@10']:.4f}, "
                  f"RecBole {theirs['test']['ndcg@10']:.4f}")
    save(args, rows)
    print(f"wrote {args.out}")


def save(args, rows: list[dict]) -> None:
    args.out.write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_seconds": args.budget_seconds,
                                    "threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
