"""Sequential models: causality, padding, NaN-safety, gradients; formulas against loop references."""

from types import SimpleNamespace

import pytest
import torch

from recsmith.models.sequential import DIN, ENCODERS
from recsmith.models.sequential.ops import causal_mask, gather_positions, last_valid_index

NUM_ITEMS, MAX_LENGTH, LENGTHS = 40, 12, [12, 7, 3, 1]
VARIANTS = [(name, {}) for name in ENCODERS.names()] + [
    ("sasrec", {"norm_first": False, "activation": "relu"}), ("avgpool", {"project": False})]
IDS = [name + "".join(f"-{k}={v}" for k, v in extra.items()) for name, extra in VARIANTS]


def seq_cfg(**din):
    din_cfg = {"attention_hidden_dims": [16, 8], "mlp_hidden_dims": [32, 16], "time_decay": False,
               "multi_head": False, "num_heads": 4, "enhanced_mlp": False, "interest_dim": 64, **din}
    return SimpleNamespace(architecture="sasrec", hidden_dim=32, num_layers=2, num_heads=2, inner_dim=64,
                           dropout=0.2, din=SimpleNamespace(**din_cfg))


def build(name, extra, seed=0):
    torch.manual_seed(seed)
    return ENCODERS.get(name)(NUM_ITEMS, MAX_LENGTH, seq_cfg(), **extra)


def batch(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(MAX_LENGTH) < torch.tensor(lengths).unsqueeze(1)  # [B, L], right-padded
    items = torch.randint(1, NUM_ITEMS + 1, mask.shape, generator=g) * mask
    return items, mask


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_encoder_shape_and_zero_padding(name, extra):
    model = build(name, extra)
    items, mask = batch()
    hidden = model(items, mask)
    assert hidden.shape == (4, MAX_LENGTH, 32)
    assert torch.isfinite(hidden).all() and (hidden[~mask] == 0).all()


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_encoder_is_causal(name, extra):
    model = build(name, extra).eval()
    items, mask = batch(lengths=[MAX_LENGTH] * 4)
    hidden = model(items, mask)
    for t in (0, 4, MAX_LENGTH - 2):
        changed = items.clone()
        changed[:, t + 1:] = torch.randint(1, NUM_ITEMS + 1, changed[:, t + 1:].shape)
        after = model(changed, mask)
        torch.testing.assert_close(after[:, :t + 1], hidden[:, :t + 1])
        assert not torch.allclose(after[:, t + 1:], hidden[:, t + 1:])


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_padding_content_is_ignored(name, extra):
    model = build(name, extra).eval()
    items, mask = batch()
    garbage = torch.where(mask, items, torch.randint(1, NUM_ITEMS + 1, items.shape))
    torch.testing.assert_close(model(garbage, mask)[mask], model(items, mask)[mask])


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("train", [False, True])
def test_single_item_and_empty_rows_are_finite(name, extra, train):
    model = build(name, extra).train(train)
    items, mask = batch(lengths=[1, 0, 5])
    hidden = model(items, mask)
    assert torch.isfinite(hidden).all()
    assert hidden[0, 0].abs().sum() > 0 and (hidden[1] == 0).all()


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_gradient_reaches_every_parameter(name, extra):
    model = build(name, extra)
    items, mask = batch()
    hidden = model(items, mask)
    logits = hidden[:, :-1][mask[:, 1:]] @ model.item_embedding.weight.T  # position t scores item t+1
    torch.nn.functional.cross_entropy(logits, items[:, 1:][mask[:, 1:]]).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    assert model.item_embedding.weight.grad[1:].abs().sum() > 0


def test_narm_matches_the_per_position_formula():
    model = build("narm", {}).eval()
    items, mask = batch()
    hidden = model(items, mask)
    h, _ = model.gru(model.item_embedding(items))
    for b, length in enumerate(LENGTHS):
        for t in range(length):
            alpha = model.energy(torch.sigmoid(model.query_proj(h[b, t]) + model.key_proj(h[b, :t + 1])))  # [t+1, 1]
            local = (alpha * h[b, :t + 1]).sum(0)
            torch.testing.assert_close(hidden[b, t], model.bilinear(torch.cat([h[b, t], local])))


def test_avgpool_is_the_prefix_mean():
    model = build("avgpool", {}).eval()
    items, mask = batch()
    hidden = model(items, mask)
    for b, length in enumerate(LENGTHS):
        for t in range(length):
            mean = model.item_embedding(items[b, :t + 1]).mean(0)
            torch.testing.assert_close(hidden[b, t], model.projection(mean))


def test_sequence_ops_against_brute_force():
    mask = causal_mask(4)
    assert all(mask[t, j] == (j <= t) for t in range(4) for j in range(4))
    _, valid = batch(lengths=[12, 7, 1, 0])
    assert last_valid_index(valid).tolist() == [11, 6, 0, 0]
    hidden = torch.randn(4, MAX_LENGTH, 3)
    index = torch.tensor([[0, 5], [6, 6], [1, 0], [11, 2]])
    torch.testing.assert_close(gather_positions(hidden, index[:, 0]), hidden[torch.arange(4), index[:, 0]])
    picked = gather_positions(hidden, index)
    assert picked.shape == (4, 2, 3)
    assert all(torch.equal(picked[b, k], hidden[b, index[b, k]]) for b in range(4) for k in range(2))


# --- DIN ------------------------------------------------------------------------------------

ABLATIONS = ["time_decay", "multi_head", "enhanced_mlp"]


def build_din(seed=0, **din):
    torch.manual_seed(seed)
    return DIN(NUM_ITEMS, MAX_LENGTH, seq_cfg(**din)).eval()


def din_batch(seed=1):
    items, mask = batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    ages = torch.rand(mask.shape, generator=g) * 100 * mask
    return items, ages, torch.randint(1, NUM_ITEMS + 1, (4,), generator=g)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("switch", [None, *ABLATIONS])
def test_din_shapes_and_padding(switch):
    model = build_din(**({switch: True} if switch else {}))
    history, ages, candidate = din_batch()
    logit = model(history, ages, candidate)
    assert logit.shape == (4,) and torch.isfinite(logit).all()
    assert model.interest(history, ages, candidate).shape == (4, 64)
    longer = torch.cat([history, torch.zeros(4, 5, dtype=torch.long)], 1)  # more padding, garbage ages on it
    noisy_ages = torch.where(history > 0, ages, torch.full_like(ages, 500.0))
    torch.testing.assert_close(model(longer, torch.cat([noisy_ages, torch.rand(4, 5)], 1), candidate), logit)
    assert not torch.allclose(model(history, ages, candidate % NUM_ITEMS + 1), logit)


@pytest.mark.parametrize("switch", ABLATIONS)
def test_din_ablation_changes_the_model(switch):
    base, ablated = build_din(), build_din(**{switch: True})
    assert n_params(ablated) != n_params(base)
    history, ages, candidate = din_batch()
    ablated.train()(history, ages, candidate).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ablated.parameters())


def test_din_time_decay_reads_the_ages():
    history, ages, candidate = din_batch()
    older = ages + 30.0 * (history > 0)
    decayed, plain = build_din(time_decay=True), build_din()
    assert not torch.allclose(decayed(history, older, candidate), decayed(history, ages, candidate))
    torch.testing.assert_close(plain(history, older, candidate), plain(history, ages, candidate))


def test_din_empty_history_is_finite():
    model = build_din(time_decay=True, multi_head=True, enhanced_mlp=True)
    history, ages, candidate = din_batch()
    history[1], ages[1] = 0, 0.0
    assert torch.isfinite(model(history, ages, candidate)).all()


def test_din_activation_unit_equals_the_mlp_on_the_concatenation():
    from recsmith.models.sequential.din import HeadwiseMLP

    torch.manual_seed(0)
    unit = HeadwiseMLP(2, 4 * 8, [16, 8])
    keys, query = torch.randn(3, 5, 2, 8), torch.randn(3, 2, 8)
    q = query.unsqueeze(1).expand_as(keys)
    direct = unit(torch.cat([keys, q, keys * q, keys - q], dim=-1))
    assert torch.allclose(unit.activation_unit(keys, query), direct, atol=1e-5)
