"""A chain repeated over several training seeds (`chain run --seeds 3`), and the summary
across them: mean ± std of every metric and of every delta, with a verdict that needs
both kinds of noise to agree.

Layout: `<output>/seed_<s>/` is a complete chain output for seed s (run dirs, summary,
delta analysis with bootstrap intervals); `<output>/seeds_summary.json`,
`seeds_summary.csv` and `seeds_delta_analysis.txt` aggregate them. Only `runtime.seed`
changes between repetitions (initialisation, batch order); the data stay the same.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

from recsmith.atomic import write_json_atomic, write_text_atomic
from recsmith.errors import ChainError
from recsmith.experiments.chain import ResolvedChain
from recsmith.experiments.columns import ordered_metrics
from recsmith.experiments.summary import metric_columns

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def parse_seeds(text: str, base_seed: int) -> list[int]:
    """"3" → three seeds from the configured one (base, base+1, base+2); "1,7,9" → those."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = [base_seed + i for i in range(count)]
    except ValueError:
        raise ChainError(f"--seeds: expected a count (e.g. 3) or a comma-separated list of seeds, got '{text}'") from None
    if len(set(seeds)) != len(seeds):
        raise ChainError(f"--seeds: seeds listed twice in '{text}'")
    return seeds


def seed_dir(output_dir: Path, seed: int) -> Path:
    return output_dir / f"seed_{seed}"


def with_seed(chain: ResolvedChain, seed: int) -> ResolvedChain:
    """The same chain with `runtime.seed` set to `seed`, writing to its own seed dir."""
    def reseed(config):
        return config.model_copy(update={"runtime": config.runtime.model_copy(update={"seed": seed})})

    experiments = [replace(e, config=reseed(e.config)) for e in chain.experiments]
    return replace(chain, base=reseed(chain.base), experiments=experiments,
                   output_dir=seed_dir(chain.output_dir, seed))


def write_seed_summary(chain: ResolvedChain, seeds: list[int]) -> tuple[Path, Path, Path]:
    """seeds_summary.json/csv and seeds_delta_analysis.txt from the seed dirs' summaries."""
    summaries = {}
    for seed in seeds:
        path = seed_dir(chain.output_dir, seed) / "summary.json"
        if path.is_file():
            summaries[seed] = json.loads(path.read_text(encoding="utf-8"))
    experiments = [_experiment_stats(e.id, summaries) for e in chain.experiments]
    comparisons = [_comparison_stats(c, summaries) for c in chain.spec.comparisons]
    out = chain.output_dir
    paths = out / "seeds_summary.json", out / "seeds_summary.csv", out / "seeds_delta_analysis.txt"
    write_json_atomic(paths[0], {"chain": chain.spec.name, "seeds": seeds, "seeds_found": sorted(summaries),
                                 "experiments": experiments, "comparisons": comparisons})
    write_text_atomic(paths[1], _csv(experiments))
    write_text_atomic(paths[2], _text(chain, seeds, sorted(summaries), comparisons))
    return paths


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _experiment_stats(exp_id: str, summaries: dict) -> dict:
    rows = {seed: next((r for r in s["experiments"] if r["exp_id"] == exp_id), None) for seed, s in summaries.items()}
    ok = {seed: r for seed, r in rows.items() if r and r["status"] == "success"}
    return {"exp_id": exp_id, "succeeded": sorted(ok), "failed": sorted(set(rows) - set(ok)),
            "metrics": {m: mean_std([r.get(m) for r in ok.values()]) for m in metric_columns(list(ok.values()))}}


def _comparison_stats(comparison, summaries: dict) -> dict:
    metrics = []
    for metric in comparison.metrics:
        per_seed = {}
        for seed, summary in summaries.items():
            found = next((c for c in summary.get("comparisons", []) if c["baseline"] == comparison.baseline
                          and c["candidate"] == comparison.candidate), None)
            stat = next((m for m in (found or {}).get("metrics", []) if m.get("metric") == metric), None)
            if stat and stat.get("verdict") in ("significant", "within noise"):
                per_seed[seed] = stat
        deltas = [s["delta"] for s in per_seed.values()]
        summary = mean_std(deltas)
        metrics.append({"metric": metric, **{f"delta_{k}": v for k, v in summary.items()},
                        "t_interval": _t_interval(summary),
                        "bootstrap_significant": sum(s["verdict"] == "significant" for s in per_seed.values()),
                        "verdict": _verdict(summary, list(per_seed.values()))})
    return {"title": comparison.title, "baseline": comparison.baseline, "candidate": comparison.candidate,
            "metrics": metrics}


def _t_interval(summary: dict) -> list[float] | None:
    n = summary["n"]
    if n < 2:
        return None
    half = T_975[min(n - 1, len(T_975)) - 1] * summary["std"] / math.sqrt(n)
    return [summary["mean"] - half, summary["mean"] + half]


def _verdict(summary: dict, stats: list[dict]) -> str:
    """Significant only when the seeds agree (their 95% t-interval of the mean delta
    excludes 0) and every seed's own test-set bootstrap interval excludes 0 on that side."""
    if summary["n"] == 0:
        return "n/a"
    if summary["n"] == 1:
        return stats[0]["verdict"]
    low, high = _t_interval(summary)
    side = 1 if low > 0 else -1 if high < 0 else 0
    agree = side != 0 and all(s["verdict"] == "significant" and (s["delta"] > 0) == (side > 0) for s in stats)
    return "significant" if agree else "within noise"


def _csv(experiments: list[dict]) -> str:
    metrics = ordered_metrics(m for e in experiments for m in e["metrics"])
    columns = ["exp_id", "seeds_succeeded"] + [f"{m}_{k}" for m in metrics for k in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for e in experiments:
        row = {"exp_id": e["exp_id"], "seeds_succeeded": len(e["succeeded"])}
        for metric, s in e["metrics"].items():
            row[f"{metric}_mean"] = "" if s["mean"] is None else f"{s['mean']:.6f}"
            row[f"{metric}_std"] = "" if s["std"] is None else f"{s['std']:.6f}"
        writer.writerow(row)
    return buffer.getvalue()


def _text(chain, seeds: list[int], found: list[int], comparisons: list[dict]) -> str:
    lines = [f"Delta analysis over seeds: chain '{chain.spec.name}'",
             f"runtime.seed in {seeds}; summaries found for {found}.",
             "Δ mean ± std over seeds; 95% t-interval of the mean Δ; how many seeds' own paired",
             "bootstrap intervals called it significant. Verdict 'significant' only when the t-interval",
             "excludes 0 and every seed's bootstrap interval excludes 0 on the same side.", ""]
    for comparison in comparisons:
        lines.append(comparison["title"])
        lines.append(f"  {'metric':<16}{'Δ mean':>11}{'± std':>10}  {'95% t-interval':<24}{'seeds sig.':>11}  verdict")
        for m in comparison["metrics"]:
            if m["delta_n"] == 0:
                lines.append(f"  {m['metric']:<16}{'n/a':>11}")
                continue
            interval = "n/a" if m["t_interval"] is None else f"[{m['t_interval'][0]:+.6f}, {m['t_interval'][1]:+.6f}]"
            lines.append(f"  {m['metric']:<16}{m['delta_mean']:>+11.6f}{m['delta_std']:>10.6f}  {interval:<24}"
                         f"{m['bootstrap_significant']:>6}/{m['delta_n']:<4}  {m['verdict']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
