"""experiment_tracker.csv: concurrent appends lose nothing; new columns widen the header."""

import multiprocessing

from recsmith.experiments.tracker import FIRST_COLUMNS, append_row, read_rows


def _append_many(path, worker, count):
    for i in range(count):
        row = {"run_id": f"w{worker}-{i}", "status": "success", "auc_ctr": 0.5 + i / 1000}
        if i % 7 == 0:
            row[f"extra_from_{worker}"] = i  # a column the file may not have yet
        append_row(path, row)


def test_concurrent_appends_keep_every_row(tmp_path):
    path = tmp_path / "experiment_tracker.csv"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    rows = read_rows(path)
    assert sorted(r["run_id"] for r in rows) == sorted(f"w{w}-{i}" for w in range(4) for i in range(25))
    header = list(rows[0])
    assert header[:2] == ["run_id", "status"] and {f"extra_from_{w}" for w in range(4)} <= set(header)
    assert next(r for r in rows if r["run_id"] == "w2-7")["extra_from_2"] == "7"
    assert next(r for r in rows if r["run_id"] == "w2-8")["extra_from_2"] == ""


def test_columns_keep_their_order(tmp_path):
    path = tmp_path / "t.csv"
    append_row(path, {"zeta": 1, "run_dir": "x", "run_id": "a", "alpha": 2.0})
    assert list(read_rows(path)[0]) == [c for c in FIRST_COLUMNS if c in ("run_id", "run_dir")] + ["alpha", "zeta"]
