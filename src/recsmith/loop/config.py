"""The loop's YAML (`configs/loop/simulate_7d.yaml`), validated on load like every recsmith
config: an unknown key, a wrong type or a bad value fails with one line naming the key.

```yaml
name: funnel_loop
days: 7
training: {config: ../base/loop_model.yaml, bootstrap_steps: 800, daily_steps: 300, window_days: 2}
gate: {min: {auc_ctr: 0.70}, calibration_tolerance: 0.10, regression_metric: auc_ctr}
release:
  stages:
    - {share: 0.01, min_canary_requests: 200}
    - {share: 0.05, min_canary_requests: 800}
    - {share: 0.20, min_canary_requests: 3000, rule: noninferior, margin: 0.10}
monitor: {slice_fields: [slot, device_os, ad_format]}
world: {requests_per_day: 24000, candidates: 8, ctr_trend_per_day: 0.05}
inject:
  bad_model: {day: 3, kind: leak, feature: item_price, forced: true}
  feature_failure: {day: 6, feature: user_hist_ctr, slice_field: device_os, slice_value: 1}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from recsmith.config.loader import apply_overrides, read_yaml, validate_model
from recsmith.config.schema import Strict
from recsmith.monitor.slices import DEFAULT_RULES, AlertRule


class TrainingConfig(Strict):
    config: str = Field(min_length=1, description="the experiment YAML every training uses (relative to this file)")
    bootstrap_steps: int = Field(800, ge=1, description="day 0: the first production model, from scratch")
    daily_steps: int = Field(300, ge=1, description="a daily update, warm-started from production")
    window_days: int = Field(2, ge=1, description="a daily update trains on the joined logs of this many days")
    every_days: int = Field(1, ge=1, description="a new candidate every this many days (or after a retrain alert)")
    freeze_days: int = Field(2, ge=0, description="no new candidate in the last days: its release could not finish")


class GateConfig(Strict):
    min: dict[str, float] = Field(default_factory=lambda: {"auc_ctr": 0.70},
                                  description="absolute floors (ceilings for lower-is-better metrics) on the test split")
    calibration_tolerance: float = Field(0.10, gt=0.0, description="|predicted / observed − 1| on the test split")
    regression_metric: str = "auc_ctr"
    regression_alpha: float = Field(0.05, gt=0.0, lt=0.5,
                                    description="refuse when the candidate is significantly worse (one-sided DeLong)")


class StageConfig(Strict):
    share: float = Field(gt=0.0, lt=1.0, description="the canary's share of requests")
    min_canary_requests: int = Field(ge=1, description="the stage's fixed horizon")
    rule: Literal["guardrail", "no_regression", "noninferior"] = "no_regression"
    margin: float = Field(0.10, ge=0.0, lt=1.0, description="noninferior: how much worse (relative CTR) is tolerated")


def _default_stages() -> list[StageConfig]:
    return [StageConfig(share=0.01, min_canary_requests=200, rule="guardrail"),
            StageConfig(share=0.05, min_canary_requests=800, rule="guardrail"),
            StageConfig(share=0.20, min_canary_requests=3000, rule="noninferior", margin=0.10)]


class ReleaseConfig(Strict):
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1,
                                      description="then 100%: the canary is promoted")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="one-sided, at a stage's horizon")
    safety_alpha: float = Field(0.001, gt=0.0, lt=0.5,
                                description="at every look before the horizon (Haybittle–Peto): a clear harm stops early")
    max_horizons: int = Field(2, ge=1, description="an inconclusive stage holds for this many horizons, then rolls back")

    @model_validator(mode="after")
    def _rising(self):
        shares = [s.share for s in self.stages]
        if shares != sorted(set(shares)):
            raise ValueError(f"release.stages: shares must rise, got {shares}")
        return self


class MonitorConfig(Strict):
    slice_fields: list[str] = Field(default_factory=lambda: ["slot", "device_os", "ad_format"])
    rules: list[AlertRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    importance_rows: int = Field(2000, ge=100, description="rows of the permutation importance sample")
    retrain_on: list[str] = Field(default_factory=lambda: ["calibration"],
                                  description="P1 alerts of these metrics (all traffic) trigger a retrain")


class BadModel(Strict):
    day: int = Field(ge=1, description="the first candidate trained on or after this day trains on a corrupted log")
    kind: Literal["misaligned", "leak", "remap"] = Field(
        "misaligned", description="misaligned: the ad and context features joined from the neighbouring impression; "
                                  "leak: the click leaked into a dense `feature`; remap: a categorical `feature`'s "
                                  "values permuted (a stale dictionary)")
    feature: Optional[str] = None
    forced: bool = Field(False, description="the candidate goes into the release even if the offline gate says no "
                                            "(its verdict is kept): a test of the online defences")

    @model_validator(mode="after")
    def _feature_when_needed(self):
        if self.kind != "misaligned" and not self.feature:
            raise ValueError(f"inject.bad_model.feature: required for kind '{self.kind}'")
        return self


class FeatureFailure(Strict):
    day: int = Field(ge=1)
    feature: str = "user_hist_ctr"
    slice_field: str = "device_os"
    slice_value: int = Field(1, ge=0, description="raw value of slice_field whose requests lose the feature")


class Injections(Strict):
    bad_model: Optional[BadModel] = None
    feature_failure: Optional[FeatureFailure] = None


class WorldConfig(Strict):
    seed: int = 20261130
    requests_per_day: int = Field(24000, ge=100)
    candidates: int = Field(8, ge=2, le=100, description="ads ranked per request; the top one is shown")
    windows_per_day: int = Field(6, ge=1, description="analysis looks per day")
    bootstrap_impressions: int = Field(60000, ge=1000, description="day 0's log, shown by a random policy")
    click_rate: float = Field(0.05, gt=0.0, lt=1.0)
    conversion_rate: float = Field(0.10, gt=0.0, lt=1.0)
    popularity_shift_per_day: float = Field(0.02, ge=0.0, description="Zipf exponent added per day")
    new_user_share_per_day: float = Field(0.01, ge=0.0, lt=0.2, description="share of requests from new users, per day")
    new_item_share_per_day: float = Field(0.01, ge=0.0, lt=0.2, description="share of new candidate ads, per day")
    ctr_trend_per_day: float = Field(0.05, description="added to the click logit every day")
    explore_share: float = Field(0.10, gt=0.0, lt=0.5,
                                 description="requests that show a random candidate: calibration and AUC are measured "
                                             "on them (the top ad's prediction is biased upwards: it won on it)")
    clients: int = Field(4, ge=1, le=32, description="concurrent clients replaying the traffic")


class LoopConfig(Strict):
    name: str = Field("loop", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    days: int = Field(7, ge=1, le=365)
    training: TrainingConfig
    gate: GateConfig = Field(default_factory=GateConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    inject: Injections = Field(default_factory=Injections)

    @model_validator(mode="after")
    def _days_in_range(self):
        for name in ("bad_model", "feature_failure"):
            injected = getattr(self.inject, name)
            if injected is not None and injected.day > self.days:
                raise ValueError(f"inject.{name}.day: {injected.day} is after the last day ({self.days})")
        return self


def load_loop_config(path: str | Path, overrides: Optional[dict] = None) -> tuple[LoopConfig, Path]:
    """(the config, the directory its relative paths start from)."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or {})
    return validate_model(LoopConfig, data, where=str(path)), path.resolve().parent
