"""The offline gate: may a candidate be released at all?

Both the candidate and production are scored, through the serving code path
(`Scorer.predict_table` on raw rows), on the same holdout: the newest joined impressions,
which the candidate did not train on. The candidate passes when
  * every `gate.min` metric clears its floor (a ceiling for lower-is-better metrics such as
    logloss): an absolute bar, so a poor model fails even when there is no production
    model to compare with;
  * its calibration (predicted / observed CTR) is within `calibration_tolerance` of 1.0, or
    not significantly outside it, on the holdout's exploration impressions (random ads shown:
    on the ads a model chose, predictions are biased upwards);
  * it is not significantly worse than production on `regression_metric`: DeLong's test of
    the two AUCs on the same rows, one-sided at `regression_alpha`.
Every decision is recorded with the numbers it was taken on.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from recsmith.errors import ConfigError
from recsmith.metrics.auc import auc, gauc
from recsmith.metrics.ab import calibration_test
from recsmith.metrics.classification import calibration, logloss
from recsmith.metrics.direction import lower_is_better
from recsmith.metrics.significance import delong
from recsmith.monitor.check import calibration_off, calibration_ratio

USER_FIELD = "user_id"


def holdout_metrics(probs: dict[str, np.ndarray], click: np.ndarray, conversion: np.ndarray,
                    users: np.ndarray) -> dict[str, float]:
    """CTR, CVR (clicked rows) and CTCVR metrics of one model on the holdout."""
    out = {"auc_ctr": auc(click, probs["ctr"]), "gauc_ctr": gauc(click, probs["ctr"], users),
           "logloss_ctr": logloss(click, probs["ctr"]), "calibration_ctr": calibration(click, probs["ctr"])}
    if "cvr" in probs:
        clicked = click > 0
        out["auc_cvr"] = auc(conversion[clicked], probs["cvr"][clicked])
    if "ctcvr" in probs:
        out["auc_ctcvr"] = auc(conversion, probs["ctcvr"])
    return {k: float(v) for k, v in out.items()}


def _target(metric: str, probs: dict, click: np.ndarray, conversion: np.ndarray):
    """(labels, scores) of an AUC metric, for the paired test."""
    if metric == "auc_ctr":
        return click, probs["ctr"]
    if metric == "auc_ctcvr":
        return conversion, probs["ctcvr"]
    if metric == "auc_cvr":
        clicked = click > 0
        return conversion[clicked], probs["cvr"][clicked]
    raise ConfigError(f"gate.regression_metric: '{metric}' is not auc_ctr, auc_cvr or auc_ctcvr")


def offline_gate(cfg, holdout: pa.Table, candidate, production=None) -> dict:
    """The gate's record: `passed`, the reasons it failed, both models' holdout metrics and the
    paired test. `candidate` and `production` are Scorers (production None: none yet)."""
    click = holdout["label_click"].to_numpy().astype(np.int8)
    conversion = holdout["label_convert"].to_numpy().astype(np.int8)
    users = holdout[USER_FIELD].to_numpy()
    scored = {"candidate": candidate.predict_table(holdout)}
    if production is not None:
        scored["production"] = production.predict_table(holdout)
    metrics = {name: holdout_metrics(probs, click, conversion, users) for name, probs in scored.items()}
    record = {"rows": int(holdout.num_rows), "clicks": int(click.sum()), "metrics": metrics, "failures": []}
    mine = metrics["candidate"]
    for key, bar in cfg.min.items():
        if key not in mine:
            raise ConfigError(f"gate.min: '{key}' is not a holdout metric (known: {', '.join(sorted(mine))})")
        value = mine[key]
        low = lower_is_better(key)
        if not math.isfinite(value) or (value > bar if low else value < bar):
            record["failures"].append(f"{key} {value:.4f} {'above the ceiling' if low else 'below the floor'} {bar}")
    explored = holdout["explore"].to_numpy(zero_copy_only=False) if "explore" in holdout.column_names \
        else np.ones(holdout.num_rows, bool)
    calibration = calibration_test(scored["candidate"]["ctr"][explored], click[explored])
    record["calibration"] = {"rows": int(explored.sum()), "ratio": calibration_ratio(calibration),
                             "p_value": calibration.p_value}
    if calibration_off(calibration, cfg.calibration_tolerance):
        record["failures"].append(f"calibration {calibration_ratio(calibration):.3f} on {int(explored.sum())} exploration "
                                  f"impressions is off 1.0 by more than {cfg.calibration_tolerance:.0%} "
                                  f"(p = {calibration.p_value:.2g})")
    if production is not None:
        labels, ours = _target(cfg.regression_metric, scored["candidate"], click, conversion)
        _, theirs = _target(cfg.regression_metric, scored["production"], click, conversion)
        test = delong(labels, theirs, ours)
        p_worse = 0.5 * math.erfc(-test.z / math.sqrt(2.0))
        record["paired"] = {"metric": cfg.regression_metric, "production": test.auc_a, "candidate": test.auc_b,
                            "delta": test.delta, "se": test.se, "p_worse": p_worse}
        if p_worse < cfg.regression_alpha:
            record["failures"].append(f"{cfg.regression_metric} {test.auc_b:.4f} is significantly below production's "
                                      f"{test.auc_a:.4f} on the same rows (DeLong, one-sided p = {p_worse:.2g})")
    record["passed"] = not record["failures"]
    return record
