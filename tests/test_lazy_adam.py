"""LazyAdam: the same update as torch's SparseAdam, and dense Adam on rows touched every step."""

import pytest
import torch

import recsmith.train.lazy_adam as lazy_adam
from recsmith.train.lazy_adam import LazyAdam


def train_pair(make_opt_a, make_opt_b, rows=400, steps=120, batch=256, every_row=False, seed=0, dense_b=False):
    torch.manual_seed(seed)
    a, b = torch.nn.Embedding(rows, 5, sparse=True), torch.nn.Embedding(rows, 5, sparse=not dense_b)
    b.weight.data.copy_(a.weight.data)
    opt_a, opt_b = make_opt_a(a.parameters()), make_opt_b(b.parameters())
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if every_row:
            ids = torch.cat([torch.arange(rows), torch.randint(0, rows, (batch,), generator=generator)])
        else:  # skewed, with repeats, leaving many rows untouched in a step
            ids = (torch.rand(batch, generator=generator) ** 3 * rows).long()
        weights = torch.randn(len(ids), 5, generator=generator)
        for emb, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (emb(ids) * weights).sum().backward()
            opt.step()
    return a.weight.detach(), b.weight.detach(), opt_a, opt_b


@pytest.mark.parametrize("marker_ratio", [64, 0])  # marker array, and the sort fallback
def test_matches_torch_sparse_adam(monkeypatch, marker_ratio):
    monkeypatch.setattr(lazy_adam, "MARKER_MAX_RATIO", marker_ratio)
    ours, torchs, opt, ref = train_pair(lambda p: LazyAdam(p, lr=0.01), lambda p: torch.optim.SparseAdam(p, lr=0.01))
    assert torch.allclose(ours, torchs, atol=1e-6, rtol=0)
    (state,), (ref_state,) = opt.state.values(), ref.state.values()
    assert torch.allclose(state["exp_avg_sq"], ref_state["exp_avg_sq"], atol=1e-7)


def test_equals_dense_adam_when_every_row_is_touched():
    # dense Adam divides by √v/√(1−β₂ᵗ) + ε, lazy Adam by (√v + ε)/√(1−β₂ᵗ): equal as ε → 0
    ours, dense, _, _ = train_pair(lambda p: LazyAdam(p, lr=0.01, eps=1e-12),
                                   lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-12), every_row=True, dense_b=True)
    assert torch.allclose(ours, dense, atol=1e-5, rtol=0)


def test_untouched_rows_keep_value_and_moments():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = LazyAdam(emb.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 1, 4])).sum().backward()
    opt.step()
    state = opt.state[emb.weight]
    changed = (emb.weight.detach() != before).any(1)
    assert changed.tolist() == [i in (1, 4) for i in range(10)]
    assert (state["exp_avg"][[0, 2, 3, 5]] == 0).all()
    assert torch.allclose(state["exp_avg"][1], torch.full((3,), 0.2))  # (1 − β₁) × two lookups


def test_state_round_trips_through_a_checkpoint(tmp_path):
    _, _, opt, _ = train_pair(lambda p: LazyAdam(p, lr=0.01), lambda p: LazyAdam(p, lr=0.01), steps=5)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    state = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert int(state["state"][0]["step"]) == 5


def test_rejects_dense_gradients():
    emb = torch.nn.Embedding(4, 2)  # dense gradients
    opt = LazyAdam(emb.parameters())
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(RuntimeError, match="expects sparse gradients"):
        opt.step()
