"""The report's charts (matplotlib, Agg): one function per chart, each writing one PNG.
The caller picks the metrics (recsmith.experiments.report), so any task names work."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def metric_bars(rows: list[dict], metrics: list[str], errors: dict[tuple[str, str], tuple[float, float]],
                oracle: dict, error_label: str, path: Path) -> Path:
    """One panel per metric: a bar per experiment, error bars, the oracle as a dashed line."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        shown = [r for r in rows if r.get(metric) is not None and np.isfinite(r[metric])]
        values = np.array([r[metric] for r in shown])
        low = [values[i] - errors.get((r["exp_id"], metric), (values[i], values[i]))[0] for i, r in enumerate(shown)]
        high = [errors.get((r["exp_id"], metric), (values[i], values[i]))[1] - values[i] for i, r in enumerate(shown)]
        ax.bar([r["exp_id"] for r in shown], values, yerr=[low, high], capsize=3, color="#4C72B0")
        floor = max(values.min() - 0.03, 0.0)
        top = max(values.max(), oracle.get(metric) or 0) + 0.01
        if oracle.get(metric) is not None:
            ax.axhline(oracle[metric], color="#C44E52", linestyle="--", label=f"oracle {oracle[metric]:.4f}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylim(floor, top)
        ax.set_title(metric)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Test metrics per experiment (error bars: {error_label})", fontsize=10)
    return _save(fig, path)


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], metrics: list[str], oracle: dict,
                    path: Path) -> Path:
    """Train loss and these validation metrics per step, one line per run."""
    panels = ["loss"] + metrics
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    colours = {exp_id: plt.cm.tab10(i % 10) for i, exp_id in enumerate(curves)}  # one colour per run
    for ax, panel in zip(axes[0], panels):
        for exp_id, series in curves.items():
            if series.get(panel):
                steps, values = zip(*series[panel])
                ax.plot(steps, values, label=exp_id, linewidth=1.2, color=colours[exp_id])
        if panel != "loss" and oracle.get(panel) is not None:
            ax.axhline(oracle[panel], color="#C44E52", linestyle="--", label="oracle (valid)")
        ax.set_title("train loss" if panel == "loss" else f"valid {panel}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _save(fig, path)


def gate_heatmap(exp_id: str, record_by_gate: dict[str, dict], path: Path) -> Path:
    """Mean gate weight per (gate, expert) at the last evaluation; top-1 share in each cell."""
    gates = list(record_by_gate)
    experts = record_by_gate[gates[0]]["experts"]
    weights = np.array([record_by_gate[g]["mean_weight"] for g in gates])
    fig, ax = plt.subplots(figsize=(1.3 * len(experts) + 2.5, 0.6 * len(gates) + 1.8))
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(gates)), gates, fontsize=8)
    for i, gate in enumerate(gates):
        for j, share in enumerate(record_by_gate[gate]["utilisation"]):
            ax.text(j, i, f"{weights[i, j]:.2f}\n({share:.0%})", ha="center", va="center", fontsize=7,
                    color="white" if weights[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="mean gate weight")
    ax.set_title(f"{exp_id}: gate weights (top-1 share) at the last evaluation", fontsize=9)
    return _save(fig, path)


def calibration(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path) -> Path:
    """Reliability diagrams: mean prediction vs observed rate per probability bin."""
    targets = list(dict.fromkeys(t for c in curves.values() for t in c))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.4 * len(targets), 4.0), squeeze=False)
    for ax, target in zip(axes[0], targets):
        top = 0.0
        for i, (exp_id, by_target) in enumerate(curves.items()):
            if target in by_target:
                predicted, observed = by_target[target]
                ax.plot(predicted, observed, marker="o", markersize=3, linewidth=1, label=exp_id,
                        color=plt.cm.tab10(i % 10))
                top = max(top, predicted.max(), observed.max())
        ax.plot([0, top], [0, top], color="grey", linestyle=":", label="calibrated")
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed rate")
        ax.set_title(f"calibration, {target} (test)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def hyperparameter_impact(panels: dict[str, list[dict]], metric: str, path: Path) -> Path:
    """One panel per swept key: the valid and test `metric` of each point at the key's value
    (a point per marker; the line joins the mean at each value; the base point is starred)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.4), squeeze=False, sharey=True)
    for ax, (key, points) in zip(axes[0], panels.items()):
        values = sorted({p["value"] for p in points}, key=_sort_key)
        position = {v: i for i, v in enumerate(values)}
        for split, colour in (("valid", "#4C72B0"), ("test", "#DD8452")):
            shown = [p for p in points if p[split] is not None]
            for base in (False, True):
                marked = [p for p in shown if p["base"] == base]
                ax.scatter([position[p["value"]] for p in marked], [p[split] for p in marked], color=colour,
                           marker="*" if base else "o", s=90 if base else 28, zorder=3,
                           label=f"{split}{' (base)' if base else ''}" if marked else None)
            means = [(position[v], np.mean([p[split] for p in shown if p["value"] == v])) for v in values
                     if any(p["value"] == v for p in shown)]
            if means:
                ax.plot(*zip(*means), color=colour, linewidth=1, alpha=0.7)
        ax.set_xticks(range(len(values)), [str(v) for v in values], fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("value")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Hyperparameter impact: {metric} per swept value (each panel: the points that set that key, "
                 "and the base point)", fontsize=9)
    return _save(fig, path)


def _sort_key(value) -> tuple:
    """Numbers in order, then everything else by its text (booleans and None count as text)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, str(value))
