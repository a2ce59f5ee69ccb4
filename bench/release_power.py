"""What does a release plan do with a canary that is truly X% better or worse? (docs/loop.md,
"What the loop can and cannot tell apart".)

Monte Carlo over the loop's own stage machine (`recsmith.loop.release.decide`, `apply`): a
loop config's plan, looked at after every window as `recsmith loop simulate` does, with the
window's requests split by the stage's share, clicks on the shown (non-exploration) ads drawn
at control's CTR and at (1 + uplift) × that for the canary. Calibration is left out (the
canary is calibrated), so this is the CTR tests alone: the P1 on a miscalibrated canary only
adds rollbacks. Prints, per true uplift, how often the canary is promoted, and the mean
number of windows a release takes.

    python bench/release_power.py configs/loop/simulate_7d.yaml --ctr 0.09 --trials 2000

Writes bench/release_power.json. Pure numpy; seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def one_release(rng, cfg, uplift: float, ctr: float, max_windows: int) -> tuple[str, int]:
    from recsmith.loop.release import Release, apply, decide
    from recsmith.metrics.ab import arm_summary, calibration_test, compare_arms

    world, stages = cfg.world, cfg.release.stages
    per_window = world.requests_per_day // world.windows_per_day
    calibrated = calibration_test(np.full(100, 0.05), (np.arange(100) < 5).astype(float))
    release = Release(version=2)
    clicks = {"control": [], "canary": []}
    for window in range(1, max_windows + 1):
        stage = stages[release.stage]
        shown = rng.binomial(per_window, 1.0 - world.explore_share)
        canary_n = rng.binomial(shown, stage.share)
        for arm, n, rate in (("control", shown - canary_n, ctr), ("canary", canary_n, ctr * (1.0 + uplift))):
            clicks[arm].append(rng.random(n) < rate)
        arms = {arm: arm_summary(np.full(sum(map(len, c)), ctr), np.concatenate(c), None) for arm, c in clicks.items()}
        report = compare_arms(arms["control"], arms["canary"],
                              margin=stage.margin if stage.rule == "noninferior" else 0.0,
                              shares={"control": 1.0 - stage.share, "canary": stage.share})
        decision = decide(release, stages, cfg.release, report, calibrated)
        release = apply(release, decision, stages, {"window": window})
        if decision.action == "advance":
            clicks = {"control": [], "canary": []}  # a stage's test reads its own impressions
        if release.status != "running":
            return release.status, window
    return "unfinished", max_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--ctr", type=float, default=0.09, help="control's CTR on the ads it shows")
    parser.add_argument("--uplift", type=float, nargs="+", default=[-0.15, -0.10, -0.05, -0.02, 0.0, 0.02, 0.05])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--max-windows", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="dotted.key=value, as recsmith loop simulate --set")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "release_power.json")
    args = parser.parse_args()
    from recsmith.config.loader import parse_overrides
    from recsmith.loop.config import load_loop_config

    cfg, _ = load_loop_config(args.config, parse_overrides(args.set))
    rng = np.random.default_rng(args.seed)
    rows = []
    for uplift in args.uplift:
        outcomes = [one_release(rng, cfg, uplift, args.ctr, args.max_windows) for _ in range(args.trials)]
        statuses = [s for s, _ in outcomes]
        row = {"true_uplift": uplift, "promoted": statuses.count("promoted") / args.trials,
               "rolled_back": statuses.count("rolled_back") / args.trials,
               "unfinished": statuses.count("unfinished") / args.trials,
               "mean_windows": float(np.mean([w for _, w in outcomes]))}
        rows.append(row)
        print(f"true uplift {uplift:+.0%}: promoted {row['promoted']:.1%}, rolled back {row['rolled_back']:.1%}, "
              f"unfinished {row['unfinished']:.1%}, {row['mean_windows']:.1f} windows on average", flush=True)
    args.out.write_text(json.dumps({"config": str(args.config), "set": args.set, "ctr": args.ctr, "trials": args.trials,
                                    "stages": [s.model_dump() for s in cfg.release.stages],
                                    "release": cfg.release.model_dump(exclude={"stages"}),
                                    "requests_per_window": cfg.world.requests_per_day // cfg.world.windows_per_day,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
