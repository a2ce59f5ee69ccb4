"""The closed loop's parts, in process: the offline gate, the release stage machine, the state
file, the registry's absolute bars, the day-by-day world. (The loop end to end, killed and
resumed: tests/test_loop_simulate.py.)"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsmith.errors import ConfigError
from recsmith.loop.config import GateConfig, ReleaseConfig, StageConfig, WorldConfig
from recsmith.loop.gate import offline_gate
from recsmith.loop.release import Release, apply, decide
from recsmith.loop.state import LoopState
from recsmith.loop.world import DayWorld
from recsmith.metrics.ab import arm_summary, calibration_test, compare_arms


# ------------------------------------------------------------------ the offline gate
class FixedScorer:
    """Scores a holdout with given probabilities (the gate only calls predict_table)."""

    def __init__(self, ctr: np.ndarray):
        self.ctr = ctr

    def predict_table(self, table: pa.Table) -> dict:
        return {"ctr": self.ctr, "cvr": np.full(len(self.ctr), 0.1), "ctcvr": self.ctr * 0.1}


def holdout(rows: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-(rng.normal(-3.0, 1.0, rows))))
    click = (rng.random(rows) < truth).astype(np.int8)
    table = pa.table({"label_click": click, "label_convert": (click & (rng.random(rows) < 0.1)).astype(np.int8),
                      "user_id": rng.integers(0, 500, rows)})
    return table, truth


def test_the_gate_holds_a_poor_model_back_even_with_no_production_model():
    table, truth = holdout()
    good = offline_gate(GateConfig(min={"auc_ctr": 0.70}), table, FixedScorer(truth))
    assert good["passed"] and good["metrics"]["candidate"]["auc_ctr"] > 0.70 and "paired" not in good
    noise = np.random.default_rng(1).random(len(truth)) * 2 * truth.mean()  # calibrated on average, no signal
    poor = offline_gate(GateConfig(min={"auc_ctr": 0.70}), table, FixedScorer(noise))
    assert not poor["passed"] and poor["failures"][0].startswith("auc_ctr 0.5")
    assert "below the floor 0.7" in poor["failures"][0]


def test_the_gate_checks_calibration_against_one_and_a_regression_on_the_same_rows():
    table, truth = holdout()
    high = offline_gate(GateConfig(min={}), table, FixedScorer(np.minimum(truth * 1.25, 1.0)))
    assert not high["passed"] and "calibration 1.2" in high["failures"][0]
    few = offline_gate(GateConfig(min={}), table.slice(0, 300), FixedScorer(np.minimum(truth[:300] * 1.25, 1.0)))
    assert few["passed"] and few["calibration"]["p_value"] > 0.01  # as far off on 300 rows: no evidence
    only_explored = table.append_column("explore", pa.array(np.arange(len(truth)) < 300))
    assert offline_gate(GateConfig(min={}), only_explored, FixedScorer(np.minimum(truth * 1.25, 1.0)))["passed"]
    # a candidate with a blurred signal, against production with the true one: significantly worse
    blurred = 1 / (1 + np.exp(-(np.log(truth / (1 - truth)) + np.random.default_rng(2).normal(0, 1.5, len(truth)))))
    blurred *= truth.mean() / blurred.mean()
    worse = offline_gate(GateConfig(min={}, calibration_tolerance=0.5), table, FixedScorer(blurred), FixedScorer(truth))
    assert not worse["passed"] and worse["paired"]["p_worse"] < 0.05
    assert "significantly below production's" in worse["failures"][-1]
    same = offline_gate(GateConfig(min={}), table, FixedScorer(truth), FixedScorer(truth))
    assert same["passed"] and same["paired"]["delta"] == 0.0 and same["paired"]["p_worse"] > 0.05
    with pytest.raises(ConfigError, match="gate.min: 'auc_nope' is not a holdout metric"):
        offline_gate(GateConfig(min={"auc_nope": 0.5}), table, FixedScorer(truth))


# ------------------------------------------------------------------ the stage machine
STAGES = [StageConfig(share=0.05, min_canary_requests=1000),
          StageConfig(share=0.20, min_canary_requests=4000, rule="noninferior", margin=0.10)]
RELEASE = ReleaseConfig(stages=STAGES, alpha=0.05, safety_alpha=0.001, max_horizons=2)


def report(control_ctr: float, canary_ctr: float, canary_n: int, control_n: int = 40_000, share: float = 0.05,
           canary_calibration: float = 1.0, seed: int = 0, margin: float = 0.0):
    """An A/B report whose clicks are exactly the given rates (no sampling noise) and the
    canary's exploration calibration at `canary_calibration`."""
    def arm(rate, n, factor):
        clicks = np.zeros(n)
        clicks[: int(round(rate * n))] = 1
        return arm_summary(np.full(n, min(rate * factor, 1.0)), clicks, np.zeros(n))
    ab = compare_arms(arm(control_ctr, control_n, 1.0), arm(canary_ctr, canary_n, 1.0), margin=margin,
                      shares={"control": 1 - share, "canary": share})
    explored = 2000
    clicks = np.zeros(explored)
    clicks[: int(0.05 * explored)] = 1
    return ab, calibration_test(np.full(explored, 0.05 * canary_calibration), clicks)


def test_a_stage_holds_until_its_horizon_then_advances_without_a_regression():
    release = Release(version=2)
    ab, calibration = report(0.05, 0.049, canary_n=400, control_n=7600)
    decision = decide(release, STAGES, RELEASE, ab, calibration)
    assert decision.action == "hold" and decision.reason.startswith("collecting: 400 of 1000")
    ab, calibration = report(0.05, 0.049, canary_n=1000, control_n=19_000)
    decision = decide(release, STAGES, RELEASE, ab, calibration)
    assert decision.action == "advance" and "no regression at the horizon" in decision.reason
    release = apply(release, decision, STAGES, {"day": 1, "window": 3})
    assert release.stage == 1 and release.status == "running" and release.history[-1]["action"] == "advance"


def test_a_guardrail_stage_advances_at_its_horizon_unless_the_harm_is_clear():
    stages = [StageConfig(share=0.05, min_canary_requests=1000, rule="guardrail"), STAGES[1]]
    worse = decide(Release(version=2), stages, RELEASE, *report(0.05, 0.042, canary_n=1000, control_n=19_000))
    assert worse.action == "advance" and worse.reason.startswith("no clear harm by the horizon")  # p ≈ 0.04
    harm = decide(Release(version=2), stages, RELEASE, *report(0.05, 0.025, canary_n=1000, control_n=19_000))
    assert harm.action == "rollback" and harm.reason.startswith("clear harm")


def test_the_last_stage_promotes_only_a_non_inferior_canary_and_an_inconclusive_one_holds_then_rolls_back():
    release = Release(version=2, stage=1)
    ab, calibration = report(0.05, 0.052, canary_n=4000, control_n=16_000, share=0.2, margin=0.10)
    decision = decide(release, STAGES, RELEASE, ab, calibration)
    assert decision.action == "promote" and "non-inferior within 10%" in decision.reason
    assert apply(release, decision, STAGES, {"day": 3, "window": 0}).status == "promoted"

    release = Release(version=3, stage=1)
    ab, calibration = report(0.05, 0.047, canary_n=4000, control_n=16_000, share=0.2, margin=0.10)  # −6%: unclear
    decision = decide(release, STAGES, RELEASE, ab, calibration)
    assert decision.action == "hold" and decision.reason.startswith("inconclusive")
    release = apply(release, decision, STAGES, {"day": 3, "window": 1})
    assert release.horizons == 2  # the next decision waits for 8,000 canary requests
    assert decide(release, STAGES, RELEASE, *report(0.05, 0.047, canary_n=6000, control_n=24_000, share=0.2,
                                                      margin=0.10)).action == "hold"
    last = decide(release, STAGES, RELEASE, *report(0.05, 0.0475, canary_n=8000, control_n=32_000, share=0.2,
                                                    margin=0.10))
    assert last.action == "rollback" and "still inconclusive after 2 horizons" in last.reason


def test_a_clear_harm_a_miscalibrated_canary_or_a_broken_split_rolls_back_at_any_look():
    release = Release(version=2)
    harm = decide(release, STAGES, RELEASE, *report(0.05, 0.02, canary_n=600, control_n=11_400))
    assert harm.action == "rollback" and harm.reason.startswith("clear harm before the horizon")
    small = decide(release, STAGES, RELEASE, *report(0.05, 0.045, canary_n=600, control_n=11_400))
    assert small.action == "hold"  # worse, but not clearly: the safety boundary is p < 0.001
    miscalibrated = decide(release, STAGES, RELEASE, *report(0.05, 0.05, canary_n=600, control_n=11_400,
                                                             canary_calibration=1.6))
    assert miscalibrated.action == "rollback" and miscalibrated.reason.startswith("P1: the canary's calibration")
    drifting = calibration_test(np.full(20_000, 0.05 * 1.6), (np.arange(20_000) < 1000).astype(float))
    shared = decide(release, STAGES, RELEASE, *report(0.05, 0.05, canary_n=600, control_n=11_400,
                                                      canary_calibration=1.6), drifting)
    assert shared.action == "hold"  # production is as far off: the world drifted, not the candidate
    less = calibration_test(np.full(20_000, 0.05 * 1.3), (np.arange(20_000) < 1000).astype(float))
    further = decide(release, STAGES, RELEASE, *report(0.05, 0.05, canary_n=600, control_n=11_400,
                                                       canary_calibration=1.6), less)
    assert further.action == "rollback" and "production's on the same traffic is 1.300" in further.reason
    # off by 40% on 1,000 exploration rows (98 clicks expected, 70 seen): p ≈ 0.003, below the monitor's
    # 0.01 but not the safety boundary every look must pass (0.001)
    noisy = calibration_test(np.full(1000, 0.098), (np.arange(1000) < 70).astype(float))
    assert 0.001 < noisy.p_value < 0.01
    assert decide(release, STAGES, RELEASE, report(0.05, 0.05, canary_n=600, control_n=11_400)[0], noisy).action == "hold"
    skewed = decide(release, STAGES, RELEASE, *report(0.05, 0.05, canary_n=1500, control_n=8_500))  # 15% for 5%
    assert skewed.action == "rollback" and skewed.reason.startswith("sample ratio mismatch")
    regression = decide(release, STAGES, RELEASE, *report(0.05, 0.040, canary_n=2000, control_n=38_000))
    assert regression.action == "rollback" and regression.reason.startswith("regression at the horizon")


def test_a_look_under_the_null_rolls_back_at_about_the_stated_rate():
    """A/A canaries (same true CTR), decided at the 5% stage's horizon: the one-sided test
    rolls back about alpha = 5% of them; the safety boundary at p < 0.001 almost never."""
    rng = np.random.default_rng(7)
    actions = []
    for _ in range(600):
        n_canary, n_control = 1000, 19_000
        canary = arm_summary(np.full(n_canary, 0.05), rng.random(n_canary) < 0.05, None)
        control = arm_summary(np.full(n_control, 0.05), rng.random(n_control) < 0.05, None)
        ab = compare_arms(control, canary, shares={"control": 0.95, "canary": 0.05})
        calibration = calibration_test(np.full(100, 0.05), np.zeros(100))  # too few to tell
        actions.append(decide(Release(version=2), STAGES, RELEASE, ab, calibration).action)
    rolled = actions.count("rollback") / len(actions)
    assert 0.02 <= rolled <= 0.09, rolled
    early = [decide(Release(version=2), STAGES, RELEASE, compare_arms(
        arm_summary(np.full(9500, 0.05), rng.random(9500) < 0.05, None),
        arm_summary(np.full(500, 0.05), rng.random(500) < 0.05, None)),
        calibration_test(np.full(100, 0.05), np.zeros(100))).action for _ in range(300)]
    assert early.count("rollback") <= 3  # before the horizon only a clear harm stops it


# ------------------------------------------------------------------ the state file
def test_a_step_runs_once_a_failed_step_reruns_and_another_config_is_refused(tmp_path):
    state = LoopState(tmp_path, {"days": 7})
    calls = []
    assert state.run_step("day01:train", lambda: calls.append(1) or {"run": "r1"}) == {"run": "r1"}
    assert state.run_step("day01:train", lambda: calls.append(2) or {"run": "r2"}) == {"run": "r1"}
    assert calls == [1]

    def crash():
        raise RuntimeError("killed mid-step")
    with pytest.raises(RuntimeError):
        state.run_step("day01:gate", crash)
    again = LoopState(tmp_path, {"days": 7})  # what a rerun reads
    assert again.done("day01:train") and not again.done("day01:gate")
    assert again.run_step("day01:gate", lambda: {"passed": True}) == {"passed": True}
    with pytest.raises(ConfigError, match="holds a loop run with another config"):
        LoopState(tmp_path, {"days": 8})


# ------------------------------------------------------------------ the world
def test_the_world_drifts_day_by_day_and_repeats_itself():
    cfg = WorldConfig(seed=3, new_user_share_per_day=0.05, ctr_trend_per_day=0.2)
    day1, day4 = DayWorld(cfg, 1).requests(4000, 4), DayWorld(cfg, 4).requests(4000, 4)
    again = DayWorld(cfg, 1).requests(4000, 4)
    assert np.array_equal(day1.fields["item_id"], again.fields["item_id"]) and np.allclose(day1.true_ctr, again.true_ctr)
    assert day4.true_ctr.mean() > day1.true_ctr.mean() * 1.3  # the CTR trend
    per_request = day1.fields["user_id"].reshape(-1, 4)
    assert (per_request == per_request[:, :1]).all()  # one user per request, several ads
    assert len(np.unique(day4.fields["user_id"])) > len(np.unique(day1.fields["user_id"]))  # new users
    top = day1.top(day1.true_ctr)
    assert day1.true_ctr[top].mean() > 1.5 * day1.true_ctr.mean()  # choosing well is worth a lot


# ------------------------------------------------------------------ monitoring
def test_importance_of_a_day_whose_exploration_rows_hold_one_label_is_not_measured():
    """A small day can show no click on its few random ads: AUC, and so permutation importance,
    is undefined there; the monitoring step notes it instead of failing (it did, on a tiny loop)."""
    from recsmith.loop.monitoring import FEATURES, _importance

    rng = np.random.default_rng(0)
    table = pa.table({**{name: rng.integers(0, 5, 60) for name in FEATURES}, "label_click": np.zeros(60, np.int8)})
    score = lambda t: np.asarray(t["user_id"], float)  # noqa: E731
    assert _importance(score, table, rows=2000, seed=1) is None
    assert _importance(score, table.slice(0, 0), rows=2000, seed=1) is None
    clicked = table.set_column(table.schema.get_field_index("label_click"), "label_click",
                               pa.array((np.arange(60) % 7 == 0).astype(np.int8)))
    measured = _importance(score, clicked, rows=2000, seed=1)
    assert set(measured) == set(FEATURES) and measured["item_id"] == 0.0
