"""How much worse is a daily update trained on a corrupted log? (docs/loop.md, "What the loop
can and cannot tell apart".)

From a finished `recsmith loop simulate` directory: warm-start production's bootstrap run on
one day's joined log (the gate's holdout window left out), clean or corrupted by one of the
loop's corruption kinds, for a number of steps, then let the oracle say what each model's
choices are worth: the true CTR of each model's top ad over fresh requests of the next day.

    python bench/loop_corruptions.py --loop runs/loop --day 3 --steps 40 --kind clean leak misaligned

Prints one line per kind (and writes bench/loop_corruptions.json). Each training is a
`recsmith train` subprocess: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"leak": "item_price", "remap": "item_category", "misaligned": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", type=Path, required=True, help="A loop directory (recsmith loop simulate --out).")
    parser.add_argument("--day", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kind", nargs="+", default=["clean", "leak", "remap", "misaligned"])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "loop_corruptions.json")
    args = parser.parse_args()
    from recsmith.data.synthetic import feature_set
    from recsmith.loop.config import LoopConfig
    from recsmith.loop.simulate import CORRUPTIONS
    from recsmith.loop.world import DayWorld, raw_columns
    from recsmith.serve.scorer import Scorer

    state = json.loads((args.loop / "loop_state.json").read_text())
    cfg = LoopConfig.model_validate(state["config"])
    windows = [args.loop / "days" / f"day_{args.day:02d}" / f"window_{w}" / "joined.parquet"
               for w in range(cfg.world.windows_per_day - 1)]
    production = args.loop / "runs" / "day_00"
    requests = DayWorld(cfg.world, args.day + 1).requests(args.requests, cfg.world.candidates)
    table = pa.table(raw_columns(requests, np.arange(requests.n * requests.k)))

    def worth(run: Path) -> dict:
        """The true CTR of the model's top ads, and its true calibration on random ads."""
        predicted = Scorer.load(run).predict_table(table)["ctr"]
        return {"true_ctr": float(requests.true_ctr[requests.top(predicted)].mean()),
                "true_calibration": float(predicted.sum() / requests.true_ctr.sum())}

    base = worth(production)
    results = {"loop": str(args.loop), "day": args.day, "steps": args.steps, "production_true_ctr": base["true_ctr"],
               "production_true_calibration": base["true_calibration"], "kinds": {}}
    work = Path(tempfile.mkdtemp())
    try:
        for kind in args.kind:
            data = work / kind
            (data / "logs").mkdir(parents=True)
            for i, path in enumerate(windows):
                log = pq.read_table(path)
                if kind != "clean":
                    log = CORRUPTIONS[kind](log, FEATURES[kind], cfg.world.seed)
                pq.write_table(log, data / "logs" / f"{i}.parquet")
            spec = {"name": kind, "input": {"path": "logs", "format": "parquet"},
                    "features": [f.model_dump(mode="json", exclude_defaults=True) for f in feature_set().features],
                    "labels": {"click": "label_click", "conversion": "label_convert"}, "user_field": "user_id",
                    "split": {"kind": "random", "valid_fraction": 0.1, "test_fraction": 0.1}}
            (data / "dataset.yaml").write_text(yaml.safe_dump(spec))
            done = subprocess.run([sys.executable, "-m", "recsmith", "train", str(REPO / "configs/loop/model.yaml"),
                                   "--run-dir", str(data / "run"), "--set", f"data.path={data / 'dataset.yaml'}",
                                   "--set", f"runtime.max_train_steps={args.steps}", "--init-from", str(production)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            value = worth(data / "run")
            value["true_uplift"] = value["true_ctr"] / base["true_ctr"] - 1
            results["kinds"][kind] = value
            print(f"{kind}: true CTR of the top ad {value['true_ctr']:.5f}, {value['true_uplift']:+.1%} against "
                  f"production; true calibration on random ads {value['true_calibration']:.3f} (production "
                  f"{base['true_calibration']:.3f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
