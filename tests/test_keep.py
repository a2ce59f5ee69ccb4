"""save_model.top_k: only the k best runs keep their checkpoints; reports stay."""

from __future__ import annotations

from pathlib import Path

from recsmith.experiments.keep import prune_checkpoints


def make_runs(tmp_path: Path, values: dict) -> dict:
    runs = {}
    for name, (value, has_checkpoints) in values.items():
        path = tmp_path / name
        path.mkdir()
        (path / "eval.json").write_text("{}")
        if has_checkpoints:
            for file in ("ckpt_best.pt", "ckpt_last.pt"):
                (path / file).write_bytes(b"x")
        runs[name] = (path, value)
    return runs


def test_the_k_best_runs_with_checkpoints_keep_them(tmp_path):
    runs = make_runs(tmp_path, {"A": (0.70, True), "B": (0.80, True), "FLOOR": (0.90, False), "C": (0.75, True),
                                "FAILED": (None, True)})
    assert prune_checkpoints(runs, "accuracy", 2) == ["A", "FAILED"]  # FLOOR has none; a run without a value is last
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == ["eval.json"]
    assert (tmp_path / "B" / "ckpt_best.pt").is_file() and (tmp_path / "C" / "ckpt_last.pt").is_file()


def test_lower_is_better_metrics_rank_the_other_way_and_none_keeps_all(tmp_path):
    runs = make_runs(tmp_path, {"A": (0.30, True), "B": (0.20, True)})
    assert prune_checkpoints(runs, "logloss", None) == []
    assert prune_checkpoints(runs, "logloss", 1) == ["A"]
