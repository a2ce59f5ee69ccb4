"""Top-K deltas (NDCG, HR, MRR) get paired-bootstrap intervals over users, like the AUCs:
on two sequential run dirs built by hand, and on the shipped sequential chain (SASREC vs
MOSTPOP on MovieLens-100K) run through the CLI."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import REPO, run_cli
from recsmith.metrics.ranking import topk_metrics
from recsmith.run_dir import RunDir
from recsmith.tasks import TaskSpec
from recsmith.train.predictions import save_predictions, save_target_ranks
from test_movielens import ML100K, needs_ml100k

USERS, ITEMS = 600, 500


def write_sequential_run(path, ranks, users):
    """A finished next-item run dir: eval.json's top-K metrics from these target ranks, the
    ranks themselves and candidate-row predictions (for the CTR-style metrics)."""
    run = RunDir(path).create()
    test = {**topk_metrics(ranks, [5, 10, 20]), "auc_primary": topk_metrics(ranks, [10])["ndcg_10"]}
    (run.path / "eval.json").write_text(json.dumps({"primary_key": "ndcg_10", "best_step": 5, "test": test}))
    save_target_ranks(run.path / "target_ranks_test.npz", ranks, users, dataset="handmade")
    rng = np.random.default_rng(len(str(path)))
    like = (rng.random(3 * USERS) < 0.3).astype(np.float32)
    save_predictions(run.predictions, {"like": rng.random(3 * USERS)}, {"like": like},
                     {"user": np.repeat(users, 3)}, {"like": TaskSpec("like", "like")}, dataset="handmade")
    return run


def chain_over(out, comparisons, ids):
    return SimpleNamespace(spec=SimpleNamespace(name="topk", comparisons=comparisons), path=out / "chain.yaml",
                           output_dir=out, experiments=[SimpleNamespace(id=e, description="") for e in ids])


@pytest.fixture(scope="module")
def topk_runs(tmp_path_factory):
    from recsmith.experiments.summary import build_summary, write_summary

    out = tmp_path_factory.mktemp("topk")
    rng = np.random.default_rng(0)
    users = rng.permutation(np.arange(1, USERS + 1))
    weak = rng.integers(1, ITEMS, USERS).astype(np.float64)  # a rank anywhere: NDCG@10 about 0.01
    strong = np.where(rng.random(USERS) < 0.3, rng.integers(1, 6, USERS), weak).astype(np.float64)
    nearly = weak.copy()
    nearly[:3] = 1.0  # three users' targets moved to the top: a delta within noise
    for exp_id, ranks in (("WEAK", weak), ("STRONG", strong), ("NEARLY", nearly)):
        write_sequential_run(out / exp_id, ranks, users)
    shuffled = write_sequential_run(out / "SHUFFLED", strong, users[::-1])  # the same ranks, other users
    metrics = ["ndcg_10", "hr_10", "mrr"]
    comparisons = [SimpleNamespace(title=f"{c} vs WEAK", question="", baseline="WEAK", candidate=c, metrics=metrics)
                   for c in ("STRONG", "NEARLY", "SHUFFLED")]
    chain = chain_over(out, comparisons, ["WEAK", "STRONG", "NEARLY", "SHUFFLED"])
    write_summary(chain, build_summary(chain))
    summary = json.loads((out / "summary.json").read_text())
    stats = {(c["candidate"], m["metric"]): m for c in summary["comparisons"] for m in c["metrics"]}
    return SimpleNamespace(out=out, stats=stats, ranks={"WEAK": weak, "STRONG": strong}, shuffled=shuffled)


def paired_user_bootstrap(values_a, values_b, resamples, seed):
    """The reference: resample users (the same ones for both runs), mean of each run's
    per-user values, the 2.5 and 97.5 percentiles of the difference."""
    rng = np.random.default_rng(seed)
    n = values_a.size
    deltas = []
    for _ in range(resamples):
        drawn = rng.integers(0, n, n)
        deltas.append(values_b[drawn].mean() - values_a[drawn].mean())
    return np.percentile(deltas, [2.5, 97.5])


def test_a_top_k_delta_has_a_paired_user_bootstrap_interval_and_a_verdict(topk_runs):
    from recsmith.experiments.comparisons import RESAMPLES, UNIT_SEED

    weak, strong = topk_runs.ranks["WEAK"], topk_runs.ranks["STRONG"]
    ndcg = lambda r: np.where(r <= 10, 1 / np.log2(r + 1), 0.0)  # noqa: E731
    stat = topk_runs.stats[("STRONG", "ndcg_10")]
    assert stat["baseline"] == pytest.approx(ndcg(weak).mean(), abs=1e-12)
    assert stat["candidate"] == pytest.approx(ndcg(strong).mean(), abs=1e-12)
    low, high = paired_user_bootstrap(ndcg(weak), ndcg(strong), RESAMPLES, seed=UNIT_SEED["targets"])
    assert (stat["ci_low"], stat["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert stat["p_value"] is None and stat["verdict"] == "significant" and stat["ci_low"] > 0
    mrr = topk_runs.stats[("STRONG", "mrr")]
    assert mrr["candidate"] == pytest.approx((1 / strong).mean(), abs=1e-12) and mrr["verdict"] == "significant"
    for metric in ("ndcg_10", "hr_10", "mrr"):
        near = topk_runs.stats[("NEARLY", metric)]
        assert near["ci_low"] <= 0 <= near["ci_high"] and near["verdict"] == "within noise", near


def test_delta_analysis_prints_the_top_k_interval_and_verdict(topk_runs):
    text = (topk_runs.out / "delta_analysis.txt").read_text()
    section = text.split("STRONG vs WEAK")[1].split("\n\n")[0]
    line = next(l for l in section.splitlines() if l.strip().startswith("ndcg_10"))
    stat = topk_runs.stats[("STRONG", "ndcg_10")]
    assert f"[{stat['ci_low']:+.6f}, {stat['ci_high']:+.6f}]" in line
    assert line.split()[-2:] == ["n/a", "significant"]  # no DeLong p-value for a top-K metric
    assert "users' targets for NDCG/HR/MRR" in text


def test_per_run_top_k_intervals_in_the_summary(topk_runs):
    with open(topk_runs.out / "summary.csv") as handle:
        rows = {r["exp_id"]: r for r in csv.DictReader(handle)}
    strong = rows["STRONG"]
    assert float(strong["ndcg_10_ci_low"]) < float(strong["ndcg_10"]) < float(strong["ndcg_10_ci_high"])
    assert float(strong["mrr_ci_low"]) < float(strong["mrr"]) < float(strong["mrr_ci_high"])


def test_runs_that_ranked_other_users_are_not_paired(topk_runs, tmp_path):
    from recsmith.experiments.comparisons import comparison_stats

    assert "tested on different rows" in topk_runs.stats[("SHUFFLED", "ndcg_10")]["reason"]
    bare = RunDir(tmp_path / "BARE").create()  # predictions but no saved ranks
    save_predictions(bare.predictions, {"like": np.zeros(3)}, {"like": np.zeros(3)}, {}, {"like": TaskSpec("like", "like")},
                     dataset="handmade")
    stats = comparison_stats({"A": topk_runs.shuffled, "B": bare},
                             [SimpleNamespace(baseline="A", candidate="B", metrics=["hr_10"])])
    assert stats[("A", "B", "hr_10")] == "no saved per-user target ranks for B"


@pytest.mark.slow
@needs_ml100k
def test_the_sequential_chain_prints_sasrec_vs_mostpop_ndcg_with_its_interval(tmp_path):
    chain = tmp_path / "seq.yaml"
    chain.write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "chains" / "ml100k_seq_models.yaml"), "name": "seq_tiny",
        "output_dir": str(tmp_path / "out"),
        "set": {"data.path": str(ML100K), "runtime.max_train_steps": 20, "runtime.eval_every_steps": 10,
                "runtime.log_every_steps": 10}}))
    result = run_cli("chain", "run", chain, "--only", "MOSTPOP,SASREC")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    for exp_id in ("MOSTPOP", "SASREC"):
        assert (out / exp_id / "target_ranks_test.npz").is_file()
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["exp_id"]: r for r in summary["experiments"]}
    versus = next(c for c in summary["comparisons"] if c["title"] == "SASREC vs MOSTPOP")
    for stat in versus["metrics"]:  # ndcg_10, hr_10, auc_like, gauc_like
        assert stat["verdict"] in ("significant", "within noise"), stat
        # recomputed from the saved ranks and predictions: exactly the runs' eval.json numbers
        assert stat["baseline"] == pytest.approx(rows["MOSTPOP"][stat["metric"]], abs=1e-12)
        assert stat["candidate"] == pytest.approx(rows["SASREC"][stat["metric"]], abs=1e-12)
    ndcg = next(m for m in versus["metrics"] if m["metric"] == "ndcg_10")
    text = (out / "delta_analysis.txt").read_text()
    line = next(l for l in text.split("SASREC vs MOSTPOP")[1].splitlines() if l.strip().startswith("ndcg_10"))
    assert f"[{ndcg['ci_low']:+.6f}, {ndcg['ci_high']:+.6f}]" in line and line.split()[-1] in ("significant", "noise")
    # the printed table shows the top-K metrics the runs have, and no column empty for every row
    assert "ndcg_10" in result.stdout and "hr_10" in result.stdout and "auc_ctr" not in result.stdout
