"""The text_classifier family on the packaged MiniLM (extra `text`): freezing, the optimizer's
groups, and a tiny fine-tune through `recsmith train` that learns a toy sentiment task."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, run_cli

from recsmith.models.text.classifier import TextClassifier, load_tokenizer
from recsmith.train.text_data import TextStream, TokenizedSplit

GOOD = ["a great film", "wonderful and moving", "brilliant acting", "i loved it", "superb fun", "a delight"]
BAD = ["a dull mess", "boring and awful", "terrible acting", "i hated it", "a tedious bore", "dreadful"]


def toy_table(path, rows: int = 240, seed: int = 0) -> None:
    """A learnable toy set: the label is the sentiment of a phrase, with filler words around it."""
    rng = np.random.default_rng(seed)
    filler = ["the movie", "this one", "honestly", "overall", "in the end", "for me"]
    labels = rng.integers(0, 2, rows)
    texts = [f"{rng.choice(filler)} {rng.choice(GOOD if y else BAD)} {rng.choice(filler)}" for y in labels]
    pq.write_table(pa.table({"text": texts, "label": ["pos" if y else "neg" for y in labels],
                             "group": [f"g{i % 60}" for i in range(rows)]}), path)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return TextClassifier("all-MiniLM-L6-v2", num_labels=2)


def test_freezing_all_but_the_classifier_trains_only_the_head(classifier):
    model = TextClassifier("all-MiniLM-L6-v2", num_labels=2)
    model.freeze("all_but_classifier", 0)
    head = sum(p.numel() for p in model.classifier_parameters())
    assert model.trainable_parameters() == head == 384 * 2 + 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.dense_parameters(), lr=1e-2)
    tokens = load_tokenizer("all-MiniLM-L6-v2")(["a great film", "a dull mess"], padding=True, return_tensors="pt")
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(tokens["input_ids"], tokens["attention_mask"])["label"],
                                                 torch.tensor([1, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad} and changed


def test_freezing_the_lowest_layers_keeps_them_and_the_embeddings_fixed(classifier):
    model = TextClassifier("all-MiniLM-L6-v2", num_labels=2)
    total = model.trainable_parameters()
    model.freeze("none", 4)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith("net.bert.embeddings.") or any(f"net.bert.encoder.layer.{i}." in n for i in range(4))
               for n in frozen)
    assert any("encoder.layer.3." in n for n in frozen) and not any("encoder.layer.4." in n for n in frozen)
    assert model.trainable_parameters() == total - sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(Exception, match="the checkpoint has 6 encoder layers"):
        TextClassifier("all-MiniLM-L6-v2", num_labels=2).freeze("none", 7)


def test_weight_decay_spares_biases_and_layer_norms(classifier):
    decay, no_decay = classifier.dense_parameters()
    names = {id(p): n for n, p in classifier.named_parameters()}
    assert all(p.ndim == 2 and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(classifier.parameters()))


def test_tokens_are_cached_and_batches_padded_to_their_longest_text(tmp_path):
    pq.write_table(pa.table({"text": ["short", "a much longer text than the other one", "mid size text"],
                             "label": pa.array([0, 1, 0], pa.int32())}), tmp_path / "train.parquet")
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    split = TokenizedSplit.load(tmp_path, "train", tokenizer, max_length=6)
    assert split.lengths.max() == 6  # truncated at max_length ([CLS] ... [SEP])
    (cached,) = (tmp_path / "tokens").glob("*/train.npz")
    again = TokenizedSplit.load(tmp_path, "train", tokenizer, max_length=6)
    assert np.array_equal(again.ids, split.ids) and cached.stat().st_mtime_ns == next(
        (tmp_path / "tokens").glob("*/train.npz")).stat().st_mtime_ns
    batch = split.batch(torch.tensor([0, 2]))
    assert batch.input_ids.shape[1] == max(split.lengths[[0, 2]])
    assert batch.attention_mask.sum(1).tolist() == split.lengths[[0, 2]].tolist()


def test_the_stream_buckets_by_length_and_resumes_where_it_was(tmp_path):
    toy_table(tmp_path / "toy.parquet")
    table = pq.read_table(tmp_path / "toy.parquet")
    pq.write_table(pa.table({"text": table["text"], "label": pa.array([0] * len(table), pa.int32())}),
                   tmp_path / "train.parquet")
    split = TokenizedSplit.load(tmp_path, "train", load_tokenizer("all-MiniLM-L6-v2"), max_length=32)
    stream = TextStream(split, batch_size=16, seed=3)
    batches = iter(stream)
    first = [next(batches) for _ in range(20)]  # more than one epoch (240 // 16 = 15 batches)
    assert stream.epoch == 1
    resumed = TextStream(split, batch_size=16, seed=3)
    resumed.load_state({"epoch": 0, "batch_in_epoch": 10})
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first[10:], iter(resumed)))
    rows = torch.cat(stream.epoch_batches(0))
    assert len(rows.unique()) == len(rows) == 240  # every text once an epoch


@pytest.mark.slow
def test_a_tiny_fine_tune_learns_a_toy_sentiment_task(tmp_path):
    toy_table(tmp_path / "toy.parquet")
    done = run_cli("train", "configs/base/sentiment_rt.yaml", "--run-dir", tmp_path / "run",
                   "--set", "data.source=text_table", "--set", f"data.path={tmp_path / 'toy.parquet'}",
                   "--set", "data.options={group_column: group, valid_fraction: 0.2, test_fraction: 0.2}",
                   "--set", "runtime.max_train_steps=40", "--set", "runtime.eval_every_steps=20",
                   "--set", "lr_scheduler.warmup_steps=5", "--set", "optim.dense.lr=0.0001",
                   "--set", "data.batch_size=16", "--set", "runtime.amp=false")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["test"]["accuracy"] > 0.8, result["test"]  # chance is about 0.5
    assert result["classes"] == ["neg", "pos"] and result["trainable_parameters"] > 20_000_000
    for name in ("classification_report.txt", "confusion_matrix.png"):
        assert (tmp_path / "run" / name).is_file()


def test_the_seed_fixes_the_new_heads_weights(tmp_path):
    """runtime.seed repeats a run: the classification head (and dropout) draw from it."""
    from recsmith.config.loader import load_experiment
    from recsmith.data.sources import resolve_dataset
    from recsmith.train.text import TextSetup

    toy_table(tmp_path / "toy.parquet")

    def head(seed: int, before: int) -> list[torch.Tensor]:
        cfg = load_experiment(REPO / "configs" / "base" / "sentiment_rt.yaml", {
            "data.source": "text_table", "data.path": str(tmp_path / "toy.parquet"), "runtime.seed": seed,
            "data.options": {"group_column": "group", "valid_fraction": 0.2, "test_fraction": 0.2}})
        torch.manual_seed(before)  # whatever drew from the global generator before the run
        return [p.detach().clone() for p in TextSetup(cfg, resolve_dataset(cfg.data), torch.device("cpu"))
                .model.classifier_parameters()]

    first, again, other = head(1, before=5), head(1, before=6), head(2, before=5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
