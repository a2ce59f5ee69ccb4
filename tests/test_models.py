"""Layers and structures: shapes, gates summing to 1, gradients reaching every parameter."""

import pytest
import torch

from recsmith.config.loader import validate_experiment
from recsmith.data.schema import DatasetSchema, DenseField, SparseField
from recsmith.models.layers.aligner import ExpertOutputAligner
from recsmith.models.layers.crossnet import CrossNetV2
from recsmith.models.layers.embedding import FeatureEmbedding
from recsmith.models.layers.fm import FMInteraction
from recsmith.models.ranking import build_model
from recsmith.tasks import FUNNEL_TASKS
from recsmith.families.ranking.setup import ranking_loss

SCHEMA = DatasetSchema(
    name="toy", source="test",
    sparse=[SparseField("user", 50, "user"), SparseField("item", 30, "item"), SparseField("ctx", 5)],
    dense=[DenseField("d0"), DenseField("d1")], labels=["click", "conversion"], user_field="user",
    tasks=list(FUNNEL_TASKS),
)
HETERO = {
    "hetero_enabled": True, "shared_num_experts": 3, "specific_num_experts": {"ctr": 1, "cvr": 1},
    "expert_dim": 16, "expert_output_align": {"enabled": True, "dropout": 0.0},
    "experts": {"shared": [{"type": "mlp", "hidden_dims": [32, 16]}, {"type": "crossnet_v2", "num_layers": 2},
                           {"type": "mlp", "hidden_dims": [24]}],
                "specific": {"ctr": [{"type": "crossnet_v2", "num_layers": 1}],
                             "cvr": [{"type": "mlp", "hidden_dims": [8]}]}},
}
ESMM = {"enabled": True}
STRUCTURES = {
    "single_ctr": {"model": {"mtl": "single", "enabled_heads": ["ctr"]}},
    "single_cvr": {"model": {"mtl": "single", "enabled_heads": ["cvr"]},
                   "runtime": {"best_selection": {"primary_key": "auc_cvr"}}},
    "sharedbottom": {"model": {"mtl": "sharedbottom"}},
    "sharedbottom_esmm": {"model": {"mtl": "sharedbottom", "esmm": ESMM}},
    "mmoe": {"model": {"mtl": "mmoe", "mmoe": {"num_experts": 3, "expert_hidden_dims": [16]}, "esmm": ESMM}},
    "mmoe_mlp_gate": {"model": {"mtl": "mmoe", "mmoe": {"num_experts": 2, "gate_type": "mlp"}}},
    "mmoe_hetero": {"model": {"mtl": "mmoe", "mmoe": {"num_experts": 2, "expert_dim": 8, "experts": [
        {"type": "mlp", "hidden_dims": [16]}, {"type": "crossnet_v2", "num_layers": 1}]}}},
    "ple": {"model": {"mtl": "ple", "ple": {"shared_num_experts": 2, "expert_hidden_dims": [16]}, "esmm": ESMM}},
    "ple_two_levels": {"model": {"mtl": "ple", "ple": {"num_levels": 2, "expert_hidden_dims": [16]}, "esmm": ESMM}},
    "ple_hetero": {"model": {"mtl": "ple", "ple": HETERO, "esmm": ESMM}},
}


def make(name):
    cfg = validate_experiment(_merge(STRUCTURES[name]))
    return cfg, build_model(SCHEMA, cfg)


def _merge(extra):
    base = {"model": {"deep_hidden_dims": [32, 16], "tower_hidden_dims": [8]},
            "runtime": {"best_selection": {"primary_key": "auc_ctr"}}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def toy_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, v, (n,), generator=g) for v in SCHEMA.vocab_sizes], 1).int()
    dense = torch.randn(n, 2, generator=g)
    click = (torch.rand(n, generator=g) < 0.5).float()
    labels = {"click": click, "conversion": click * (torch.rand(n, generator=g) < 0.5).float()}
    return sparse, dense, labels


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_outputs_one_logit_per_head(name):
    cfg, model = make(name)
    sparse, dense, _ = toy_batch()
    logits = model(sparse, dense)
    assert set(logits) == set(cfg.model.enabled_heads)
    assert all(v.shape == (64,) and v.dtype == torch.float32 for v in logits.values())


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_gates_are_distributions(name):
    _, model = make(name)
    sparse, dense, _ = toy_batch()
    _, gates = model(sparse, dense, with_gates=True)
    assert set(gates) == set(model.gate_experts)
    for gate, weights in gates.items():
        assert weights.shape == (64, len(model.gate_experts[gate]))
        assert torch.allclose(weights.sum(-1), torch.ones(64), atol=1e-6)
        assert (weights >= 0).all()
    if name.startswith(("mmoe", "ple")):
        assert gates


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_gradient_reaches_every_parameter(name):
    cfg, model = make(name)
    sparse, dense, labels = toy_batch(n=256)
    total, _ = ranking_loss(cfg, SCHEMA.task_specs)(model(sparse, dense), labels)
    total.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        grad = param.grad.coalesce().values() if param.grad.is_sparse else param.grad
        assert torch.isfinite(grad).all(), pname
        assert grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    assert model.embedding.table.weight.grad.is_sparse


def test_fused_embedding_offsets_and_first_order_column():
    emb = FeatureEmbedding([3, 4, 2], dim=5, with_bias=True)
    ids = torch.tensor([[0, 0, 0], [2, 3, 1]], dtype=torch.int32)
    vectors, first = emb(ids)
    table = emb.table.weight
    assert vectors.shape == (2, 3, 5) and first.shape == (2, 3)
    assert torch.equal(vectors[1, 1], table[3 + 3, :5]) and torch.equal(vectors[1, 2], table[7 + 1, :5])
    assert torch.equal(first, torch.zeros(2, 3))  # first-order weights start at 0


def test_fm_interaction_equals_the_pairwise_sum():
    e = torch.randn(4, 6, 3, dtype=torch.float64)
    pairwise = sum((e[:, i] * e[:, j]).sum(-1) for i in range(6) for j in range(i + 1, 6))
    assert torch.allclose(FMInteraction()(e).sum(-1), pairwise)


def test_crossnet_v2_follows_its_recurrence():
    net = CrossNetV2(4, 2).double()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    x1 = x0 * net.layers[0](x0) + x0
    x2 = x0 * net.layers[1](x1) + x1
    assert torch.allclose(net(x0), x2)


def test_aligner_normalises_each_expert_and_scales_from_one():
    aligner = ExpertOutputAligner(num_experts=2, dim=8)
    out = aligner(torch.stack([torch.randn(5, 8) * 100 + 7, torch.randn(5, 8) * 0.5], 1))
    assert torch.allclose(out.mean(-1), torch.zeros(5, 2), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(5, 2), atol=1e-3)
    assert torch.equal(aligner.scale.data, torch.ones(2))


def test_same_seed_same_initialisation():
    _, a = make("mmoe")
    _, b = make("mmoe")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_mmoe_takes_any_registered_expert_like_ple():
    _, model = make("mmoe_hetero")
    assert model.gate_experts["ctr"] == ["expert0(mlp)", "expert1(crossnet_v2)"]
    assert model.structure.experts.out_dim == 8  # each listed expert projected to expert_dim
