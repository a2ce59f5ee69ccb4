"""The staged release: a canary goes 1% → 5% → 20% → 100% of requests (the plan is
`release.stages`, then promotion), one decision per look.

The rule against peeking. Each stage has a fixed horizon, `min_canary_requests` canary
requests (shown ads) in the stage; the decision test runs at the horizon, once, at one-sided
level `alpha`:
  * `guardrail` stage (a smoke test: too few requests to tell small differences): advance,
    unless the checks every look makes (below) stopped it before;
  * the canary's CTR significantly below control's (pooled z-test) → roll back;
  * `no_regression` stage: otherwise advance;
  * `noninferior` stage: advance when the CTR is non-inferior within `margin` (relative);
    otherwise the stage is inconclusive: it holds for another horizon (the sample grows),
    and rolls back after `max_horizons` inconclusive horizons.
Before the horizon, every look may only stop for clear harm (Haybittle–Peto): the canary's
CTR lower with one-sided p < `safety_alpha` (0.001), or a P1 alert on the canary (its
calibration on exploration impressions off 1.0 by more than 10% with p < `safety_alpha`,
and further off than production's there by more than 10 points). So the decision's error
rate stays the stated alpha, however often the loop looks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from recsmith.metrics.ab import ABReport, CalibrationResult
from recsmith.monitor.check import CALIBRATION_ALPHA, CALIBRATION_ERROR_P1, calibration_off, calibration_ratio

Action = Literal["hold", "advance", "promote", "rollback"]


@dataclass
class Release:
    """One candidate's way through the plan (JSON-able: kept in the loop's state file)."""

    version: int
    stage: int = 0  # index into release.stages
    horizons: int = 1  # the horizon in force: horizons × min_canary_requests
    status: Literal["running", "promoted", "rolled_back"] = "running"
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def one_sided_worse(report: ABReport) -> float:
    """p of H1 "the canary's CTR is lower" (the pooled z-test, one-sided)."""
    return 0.5 * math.erfc(-report.ctr.z / math.sqrt(2.0))


def canary_p1(calibration: CalibrationResult, control: Optional[CalibrationResult] = None,
              alpha: float = CALIBRATION_ALPHA) -> Optional[str]:
    """The canary's calibration P1: off 1.0 by more than 10%, the calibration test's p below
    `alpha` (`decide` passes the safety boundary: it is asked at every look), and further off
    than production on the same traffic by more than 10 points. Production as far off means
    the world drifted (the monitor's P1 on production asks for a retrain), not that the
    candidate is worse."""
    if not calibration_off(calibration, alpha=alpha):
        return None
    ratio = calibration_ratio(calibration)
    theirs = calibration_ratio(control) if control is not None else math.nan
    if math.isfinite(theirs) and abs(ratio - 1.0) <= abs(theirs - 1.0) + CALIBRATION_ERROR_P1:
        return None
    return (f"P1: the canary's calibration (predicted / observed CTR) on its exploration impressions is "
            f"{ratio:.3f}, off 1.0 by more than {CALIBRATION_ERROR_P1:.0%} (p = {calibration.p_value:.2g} < {alpha:g})"
            + (f", and production's on the same traffic is {theirs:.3f}" if control is not None else ""))


def decide(release: Release, stages, cfg, report: ABReport, calibration: CalibrationResult,
           control: Optional[CalibrationResult] = None) -> Decision:
    """The decision at one look: `stages` the plan, `cfg` the ReleaseConfig, `report` the A/B
    report of the stage's impressions so far (one per request: the ad the model chose),
    `calibration` the canary's on its exploration impressions (a random ad shown: a model's
    prediction for the ad it chose is biased upwards, it won on it), `control` production's there."""
    stage = stages[release.stage]
    in_stage = report.canary.impressions
    worse = one_sided_worse(report)
    alarm = canary_p1(calibration, control, cfg.safety_alpha)
    if alarm:
        return Decision("rollback", alarm)
    if report.srm is not None and report.srm.mismatch:
        return Decision("rollback", f"sample ratio mismatch: {report.srm.observed} for shares "
                                    f"{report.srm.expected} (p = {report.srm.p_value:.2g}): the split is broken, "
                                    "the comparison cannot be trusted")
    ctr = f"CTR {report.canary.ctr:.4f} vs {report.control.ctr:.4f} (uplift {report.ctr.relative_uplift:+.1%})"
    if worse < cfg.safety_alpha:
        return Decision("rollback", f"clear harm before the horizon: {ctr}, one-sided p = {worse:.2g} "
                                    f"< {cfg.safety_alpha}")
    horizon = release.horizons * stage.min_canary_requests
    if in_stage < horizon:
        return Decision("hold", f"collecting: {in_stage} of {horizon} canary requests at {stage.share:.0%}")
    last = release.stage == len(stages) - 1
    onward: Action = "promote" if last else "advance"
    if stage.rule == "guardrail":
        return Decision(onward, f"no clear harm by the horizon ({in_stage} canary requests): {ctr}, "
                                f"p(worse) = {worse:.3g}")
    if worse < cfg.alpha:
        return Decision("rollback", f"regression at the horizon: {ctr}, one-sided p = {worse:.3g} < {cfg.alpha}")
    if stage.rule == "no_regression":
        return Decision(onward, f"no regression at the horizon ({in_stage} canary requests): {ctr}, "
                                f"p(worse) = {worse:.3g}")
    if report.ctr.p_noninferior < cfg.alpha:
        return Decision(onward, f"non-inferior within {stage.margin:.0%} at the horizon ({in_stage} canary requests): "
                                f"{ctr}, p = {report.ctr.p_noninferior:.3g}")
    if release.horizons < cfg.max_horizons:
        return Decision("hold", f"inconclusive at the horizon ({ctr}, non-inferiority p = "
                                f"{report.ctr.p_noninferior:.3g}): holding for another {stage.min_canary_requests}")
    return Decision("rollback", f"still inconclusive after {release.horizons} horizons ({ctr}, non-inferiority "
                                f"p = {report.ctr.p_noninferior:.3g})")


def apply(release: Release, decision: Decision, stages, when: dict) -> Release:
    """The release after `decision` (taken at `when`: day, window), the decision appended to
    its history."""
    release.history.append({**when, "stage": release.stage, "share": stages[release.stage].share,
                            "action": decision.action, "reason": decision.reason})
    if decision.action == "advance":
        release.stage += 1
        release.horizons = 1
    elif decision.action == "promote":
        release.status = "promoted"
    elif decision.action == "rollback":
        release.status = "rolled_back"
    elif decision.reason.startswith("inconclusive"):
        release.horizons += 1
    return release
