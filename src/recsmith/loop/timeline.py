"""The loop's timeline report (`timeline.html` in the loop directory): per day the production
and canary versions, the online A/B numbers with intervals, the oracle's true uplift, the
gate, the alerts and every decision; then each release's way through the plan. One
self-contained page (inline SVG charts), nothing fetched."""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

from recsmith.atomic import write_text_atomic

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}th{background:#f3f3f3}
.P1{color:#b00;font-weight:bold}.P2{color:#a60}.good{color:#070}.bad{color:#b00}code{font-size:12px}"""


def _pct(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.{digits}f}%"


def _interval(arm: dict) -> str:
    return f"{_pct(arm['ctr'])} [{_pct(arm['ctr_low'])}, {_pct(arm['ctr_high'])}] of {arm['impressions']}"


def _windows(state: dict) -> list[dict]:
    done = state["done"]
    return [v for k, v in sorted(done.items()) if ":serve:w" in k]


def _subplots(height: float):
    """(figure, axes) of a 10-inch-wide chart, drawn off-screen (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(10, height))


def _inline_svg(fig) -> str:
    """A matplotlib figure as an inline <svg> element, closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def _chart(windows: list[dict]) -> str:
    """True CTR of the shown ads per window (all traffic), with the canary's share."""
    fig, ax = _subplots(3)
    x = list(range(len(windows)))
    ax.plot(x, [w["true_ctr_shown"] for w in windows], marker=".", label="true CTR of the shown ads")
    ax.set_xticks(x[:: max(1, len(x) // 14)], [f"d{w['day']}w{w['window']}" for w in windows][:: max(1, len(x) // 14)],
                  fontsize=7)
    ax.set_ylabel("true CTR")
    twin = ax.twinx()
    twin.step(x, [w["share"] for w in windows], where="mid", color="tab:orange", label="canary share")
    twin.set_ylabel("canary share")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    return _inline_svg(fig)


def _monitor_chart(state: dict) -> str:
    """Per day: production's calibration on its exploration impressions (all traffic) against
    1.0 and the ±10% P1 band, and the day's P1 and P2 alerts."""
    days = sorted(int(k[3:5]) for k in state["done"] if k.endswith(":monitor"))
    records = [state["done"][f"day{d:02d}:monitor"] for d in days]
    fig, ax = _subplots(2.6)
    ax.plot(days, [r.get("calibration_all") for r in records], marker="o", label="calibration (predicted / observed)")
    ax.axhspan(0.9, 1.1, color="tab:green", alpha=0.12, label="within ±10%")
    ax.set_xlabel("day")
    ax.set_xticks(days)
    twin = ax.twinx()
    for level, colour, shift in (("P1", "tab:red", -0.15), ("P2", "tab:orange", 0.15)):
        twin.bar([d + shift for d in days], [sum(a["level"] == level for a in r["alerts"]) for r in records], width=0.3,
                 color=colour, alpha=0.5, label=f"{level} alerts")
    twin.set_ylabel("alerts")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    return _inline_svg(fig)


def day_rows(state: dict) -> list[dict]:
    """One row per day: what served, what the looks decided, the gate, the alerts."""
    rows = []
    days = sorted({int(k[3:5]) for k in state["done"] if k.startswith("day")})
    for day in days:
        key = f"day{day:02d}"
        windows = [w for w in _windows(state) if w["day"] == day]
        looks = [w["look"] for w in windows if w.get("look")]
        gate = state["done"].get(f"{key}:gate")
        rows.append({
            "day": day,
            "production": sorted({w["production"] for w in windows}),
            "canary": sorted({f"{w['canary']} at {w['share']:.0%}" for w in windows if w["canary"]}),
            "requests": sum(w["requests"] for w in windows),
            "true_ctr_shown": sum(w["true_ctr_shown"] * w["requests"] for w in windows) / max(1, sum(w["requests"]
                                                                                                  for w in windows)),
            "last_look": looks[-1] if looks else None,
            "true_uplift": [w["oracle"]["true_uplift"] for w in windows if w.get("oracle")],
            "decisions": [f"w{w['window']}: {w['look']['action']}" for w in windows
                          if w.get("look") and w["look"]["action"] != "hold"],
            "gate": gate,
            "corrupted": (state["done"].get(f"{key}:train") or {}).get("corrupted"),
            "version": state["done"].get(f"{key}:register"),
            "alerts": [a for a in state["alerts"] if a.get("day") == day],
        })
    return rows


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_timeline(directory: Path, state: dict, summary: dict) -> Path:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>recsmith loop timeline</title>"
             f"<style>{STYLE}</style></head><body><h1>Loop timeline: {e(state['config']['name'])}</h1>",
             f"<p>{state['config']['days']} days; {summary['decisions_agreeing_with_oracle']} of {summary['decisions']} "
             f"release decisions agree with the oracle's true uplift; {summary['alerts']} alerts; "
             f"{summary.get('seconds', '–')} s.</p>"]
    windows = _windows(state)
    if windows:
        parts.append(f"<figure id='trend'>{_chart(windows)}</figure>")
        parts.append(f"<figure id='monitoring'>{_monitor_chart(state)}</figure>")
    parts.append("<h2>Days</h2><table id='days'><tr><th>day</th><th>production</th><th>canary</th><th>requests</th>"
                 "<th>true CTR shown</th><th>online CTR at the last look: control / canary</th><th>true uplift "
                 "(oracle)</th><th>decisions</th><th>offline gate</th><th>alerts</th></tr>")
    for row in day_rows(state):
        look = row["last_look"]
        online = f"{_interval(look['ab']['control'])}<br>{_interval(look['ab']['canary'])}" if look else "–"
        uplift = _pct(sum(row["true_uplift"]) / len(row["true_uplift"])) if row["true_uplift"] else "–"
        gate = row["gate"]
        gate_text = "–" if gate is None else ("passed" if gate["passed"] else "failed: " + "; ".join(gate["failures"]))
        if gate is not None and gate.get("overridden"):
            gate_text = "<b>failed, forced past it (the injected model)</b>: " + e("; ".join(gate["overridden"]))
        if row["corrupted"]:
            gate_text = f"trained on a corrupted log ({e(row['corrupted'])})<br>" + gate_text
        if gate is not None and gate.get("paired"):
            paired = gate["paired"]
            gate_text += (f"<br>{paired['metric']} {paired['candidate']:.4f} vs production {paired['production']:.4f}"
                          f" (p worse {paired['p_worse']:.2g})")
        if row["version"] is not None:
            gate_text += f"<br>→ v{row['version']}"
        alerts = "<br>".join(f"<span class='{a['level']}'>{e(a.get('message', ''))}</span>" for a in row["alerts"][:8])
        more = len(row["alerts"]) - 8
        alerts += f"<br>… {more} more" if more > 0 else ""
        parts.append(f"<tr><td>{row['day']}</td><td>{e(', '.join(row['production']))}</td>"
                     f"<td>{e('; '.join(row['canary'])) or '–'}</td><td>{row['requests']}</td>"
                     f"<td>{_pct(row['true_ctr_shown'])}</td><td>{online}</td><td>{uplift}</td>"
                     f"<td>{e(', '.join(row['decisions'])) or '–'}</td><td>{gate_text}</td><td>{alerts or '–'}</td></tr>")
    parts.append("</table><h2>Releases</h2><table id='releases'><tr><th>version</th><th>status</th><th>true uplift"
                 "</th><th>by the oracle</th><th>true calibration on random ads: canary / production</th>"
                 "<th>decisions</th></tr>")
    releases = list(state["releases"]) + ([state["release"]] if state["release"] else [])
    truth = {r["version"]: r for r in summary["releases"]}
    for release in releases:
        known = truth.get(release["version"], {})
        steps = "<br>".join(f"day {h['day']} w{h['window']} at {h['share']:.0%}: <b>{h['action']}</b>: {e(h['reason'])}"
                            for h in release["history"] if h["action"] != "hold")
        verdict = "good" if known.get("truly_good") else "bad"
        parts.append(f"<tr><td>v{release['version']}</td><td>{release['status']}</td>"
                     f"<td>{_pct(known.get('true_uplift'))}</td><td class='{verdict}'>{verdict}</td>"
                     f"<td>{_ratio(known.get('true_calibration'))} / {_ratio(known.get('production_true_calibration'))}"
                     f"</td><td>{steps or '–'}</td></tr>")
    parts.append("</table></body></html>")
    path = Path(directory) / "timeline.html"
    write_text_atomic(path, "\n".join(parts))
    return path
