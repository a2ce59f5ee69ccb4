"""A fine-tuned text classifier scores raw texts the way its run scored the test split:
`recsmith predict`, a bundle and the HTTP service agree with predictions_text_test.npz to 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from test_text_classifier import toy_table

from recsmith.serve.app import ServeSettings, build_app
from recsmith.serve.bundle import write_bundle
from recsmith.serve.routing import Deployment
from recsmith.serve.scorer import Scorer
from recsmith.serve.server import start_background
from recsmith.serve.sources import ModelSource
from recsmith.train.predictions import load_text_predictions, text_predictions_path

pytestmark = pytest.mark.slow
TOY = ["--set", "data.source=text_table", "--set", "data.options={group_column: group, valid_fraction: 0.2, "
       "test_fraction: 0.2}", "--set", "runtime.max_train_steps=20", "--set", "runtime.eval_every_steps=10",
       "--set", "lr_scheduler.warmup_steps=2", "--set", "data.batch_size=16"]


def train(tmp_path: Path, name: str, *extra: str) -> Path:
    done = run_cli("train", "configs/base/sentiment_rt.yaml", "--run-dir", tmp_path / name, "--set",
                   f"data.path={tmp_path / 'toy.parquet'}", *TOY, *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path / name


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny fine-tune trained in bf16 autocast whatever the CPU (forced: `auto` would pick
    fp32 on one without native bf16, and test_text_classifier's fine-tune covers fp32), scored
    in fp32, and its test texts."""
    tmp_path = tmp_path_factory.mktemp("text-serving")
    toy_table(tmp_path / "toy.parquet")
    run = train(tmp_path, "run", "--set", "runtime.amp=bf16")
    dataset = Path(json.loads((run / "eval.json").read_text())["dataset"])
    return run, pq.read_table(dataset / "test.parquet").select(["text"])


def offline(run: Path) -> np.ndarray:
    return load_text_predictions(text_predictions_path(run)).probabilities


def test_recsmith_predict_scores_a_csv_of_texts_like_the_run(text_run, tmp_path):
    run, texts = text_run
    pacsv.write_csv(texts, tmp_path / "texts.csv")
    done = run_cli("predict", run, "--input", tmp_path / "texts.csv", "--output", tmp_path / "scored.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    scored = pacsv.read_csv(tmp_path / "scored.csv")
    probs = np.stack([scored["prob_neg"].to_numpy(), scored["prob_pos"].to_numpy()], axis=1)
    assert scored["text"].to_pylist() == texts["text"].to_pylist()
    np.testing.assert_allclose(probs, offline(run), atol=1e-5)


def test_a_bundle_scores_like_its_run(text_run, tmp_path):
    run, texts = text_run
    meta = write_bundle(run, tmp_path / "bundle")
    assert meta["family"] == "text_classifier" and meta["tasks"] == ["label"] and meta["features"] == []
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["bundle.json", "config.yaml", "eval.json",
                                                                         "model.pt", "schema.json"]
    scorer = Scorer.load(tmp_path / "bundle")
    probs = scorer.predict_table(texts)
    np.testing.assert_allclose(np.stack([probs["neg"], probs["pos"]], axis=1), offline(run), atol=1e-5)


def test_the_service_scores_raw_texts_like_the_run_and_names_a_bad_row(text_run):
    run, texts = text_run
    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(run))), source, ServeSettings()))
    try:
        with httpx.Client() as client:
            meta = client.get(f"{server.url}/metadata").json()
            assert meta["outputs"] == ["neg", "pos"] and meta["columns"] == ["text"]
            rows = [{"text": t} for t in texts["text"].to_pylist()]
            answer = client.post(f"{server.url}/predict", json={"rows": rows}, timeout=60).json()
            probs = np.stack([answer["predictions"]["neg"], answer["predictions"]["pos"]], axis=1)
            np.testing.assert_allclose(probs, offline(run), atol=1e-5)
            bad = client.post(f"{server.url}/predict", json={"rows": [{"text": "fine"}, {"review": "x"}]}, timeout=30)
            assert bad.status_code == 422 and "row 1 lacks the field 'text'" in bad.text
    finally:
        server.stop()


def test_the_tfidf_floor_is_not_served(text_run, tmp_path):
    run = train(text_run[0].parent, "floor", "--set", "model.architecture=tfidf_logreg")
    done = run_cli("predict", run, "--input", tmp_path / "none.csv", "--output", tmp_path / "out.csv")
    assert done.returncode != 0 and "a fitted text_classifier model (no checkpoint) is not served" in done.stderr


def test_the_page_scores_pasted_texts_in_a_browser(text_run, tmp_path):
    """Headless Chromium opens /ui with texts in the address: each row's label and probability
    appear, equal to the service's answer, with no console errors; the page renders (a screenshot)."""
    import subprocess
    from urllib.parse import quote

    from conftest import chromium, console_messages

    run, texts = text_run
    chosen = texts["text"].to_pylist()[:3] + ['a "quoted", comma text']
    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(run))), source, ServeSettings()))
    try:
        url = f"{server.url}/ui#texts={quote(chr(10).join(chosen))}"
        command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1100,700"]
        done = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        shot = subprocess.run([*command, f"--screenshot={tmp_path / 'page.png'}", url], capture_output=True,
                              text=True, timeout=120)
        with httpx.Client() as client:
            answer = client.post(f"{server.url}/predict", json={"rows": [{"text": t} for t in chosen]}).json()
    finally:
        server.stop()
    assert not console_messages(done.stderr), console_messages(done.stderr)
    assert f"scored {len(chosen)} text(s)" in done.stdout, done.stdout[-2000:]
    probs = np.stack([answer["predictions"]["neg"], answer["predictions"]["pos"]], axis=1)
    for text, row in zip(chosen, probs):
        label = ["neg", "pos"][int(row.argmax())]
        assert f"<td>{text}</td><td>{label}</td><td class=\"p\">{row.max():.4f}" in done.stdout
    assert shot.returncode == 0 and (tmp_path / "page.png").stat().st_size > 10_000


def test_the_page_scores_an_uploaded_csv_and_offers_the_scored_csv(text_run, tmp_path):
    """A person chooses a CSV file (Playwright driving headless Chromium): each row is scored
    as the service scores it, the scored CSV downloads with the same probabilities, and a CSV
    without a `text` column is named on the page; no console errors."""
    import csv

    from conftest import chromium
    from playwright.sync_api import sync_playwright

    run, texts = text_run
    chosen = texts["text"].to_pylist()[:5] + ['a "quoted", comma text', "two\nlines"]
    upload = tmp_path / "reviews.csv"
    with open(upload, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "text"], *([i, t] for i, t in enumerate(chosen))])
    (tmp_path / "bad.csv").write_text("id,review\n1,fine\n", encoding="utf-8")
    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(run))), source, ServeSettings()))
    problems: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox",
                                                                                   "--disable-dev-shm-usage"])
            page = browser.new_page(accept_downloads=True)
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{server.url}/ui")
            page.set_input_files("#file", str(upload))
            page.click("#score")
            page.wait_for_selector(f"#status:has-text('scored {len(chosen)} text(s)')", timeout=60_000)
            shown = [[cell.text_content() for cell in row.query_selector_all("td")]
                     for row in page.query_selector_all("#results tbody tr")]
            with page.expect_download() as download:
                page.click("#download")
            scored = list(csv.DictReader(open(download.value.path(), newline="", encoding="utf-8")))
            page.set_input_files("#file", str(tmp_path / "bad.csv"))
            page.click("#score")
            page.wait_for_selector("#status.error", timeout=30_000)
            refused = page.inner_text("#status")
            browser.close()
        with httpx.Client() as client:
            answer = client.post(f"{server.url}/predict", json={"rows": [{"text": t} for t in chosen]}).json()
    finally:
        server.stop()
    assert not problems, problems
    probs = np.stack([answer["predictions"]["neg"], answer["predictions"]["pos"]], axis=1)
    assert [row["text"] for row in scored] == chosen and [row[0] for row in shown] == chosen
    np.testing.assert_allclose([[float(r["prob_neg"]), float(r["prob_pos"])] for r in scored], probs, atol=1e-6)
    assert [r["label"] for r in scored] == [row[1] for row in shown] == [["neg", "pos"][i] for i in probs.argmax(1)]
    assert "bad.csv has no 'text' column (its header: id, review)" in refused


def test_the_page_is_only_for_text_models(ranking_runs):
    source = ModelSource()
    server = start_background(build_app(Deployment(source.load(str(ranking_runs[0]))), source, ServeSettings()))
    try:
        answer = httpx.get(f"{server.url}/ui")
    finally:
        server.stop()
    assert answer.status_code == 404 and "the page scores texts" in answer.text
