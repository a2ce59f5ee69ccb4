"""Losses against hand computations."""

import math

import pytest
import torch

from recsmith.tasks import FUNNEL_TASKS, FunnelPair
from recsmith.train.losses import ESMMLoss, MultiTaskLoss, bce_from_log_prob, log1mexp

CTR, CVR = FUNNEL_TASKS


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_esmm_v2_loss_matches_a_hand_computation():
    ctr = [0.5, -1.0, 2.0, 0.0]
    cvr = [1.0, 0.3, -2.0, 0.7]
    click = [1.0, 0.0, 1.0, 1.0]
    conversion = [1.0, 0.0, 0.0, 1.0]
    lam = 0.1
    n = len(ctr)
    loss_ctr = sum(bce(sigmoid(a), c) for a, c in zip(ctr, click)) / n
    loss_ctcvr = sum(bce(sigmoid(a) * sigmoid(b), c * v) for a, b, c, v in zip(ctr, cvr, click, conversion)) / n
    clicked = [i for i in range(n) if click[i] == 1]
    loss_aux = sum(bce(sigmoid(cvr[i]), conversion[i]) for i in clicked) / len(clicked)
    expected = loss_ctr + loss_ctcvr + lam * loss_aux

    logits = {"ctr": torch.tensor(ctr, dtype=torch.float64), "cvr": torch.tensor(cvr, dtype=torch.float64)}
    labels = {"click": torch.tensor(click, dtype=torch.float64),
              "conversion": torch.tensor(conversion, dtype=torch.float64)}
    total, terms = ESMMLoss(FunnelPair(CTR, CVR), lam)(logits, labels)
    assert terms["loss_ctr"].item() == pytest.approx(loss_ctr, rel=1e-12)
    assert terms["loss_ctcvr"].item() == pytest.approx(loss_ctcvr, rel=1e-10)
    assert terms["loss_cvr_aux"].item() == pytest.approx(loss_aux, rel=1e-12)
    assert total.item() == pytest.approx(expected, rel=1e-10)
    v1_total, v1_terms = ESMMLoss(FunnelPair(CTR, CVR), 0.0)(logits, labels)
    assert "loss_cvr_aux" not in v1_terms
    assert v1_total.item() == pytest.approx(loss_ctr + loss_ctcvr, rel=1e-10)


def test_multitask_loss_trains_cvr_on_clicked_rows_only():
    logits = {"ctr": torch.tensor([0.2, -0.4, 1.0]), "cvr": torch.tensor([3.0, -5.0, 0.1])}
    labels = {"click": torch.tensor([1.0, 0.0, 1.0]), "conversion": torch.tensor([1.0, 0.0, 0.0])}
    total, terms = MultiTaskLoss([CTR, CVR])(logits, labels)
    expected_cvr = (bce(sigmoid(3.0), 1) + bce(sigmoid(0.1), 0)) / 2
    assert terms["loss_cvr"].item() == pytest.approx(expected_cvr, rel=1e-6)
    assert total.item() == pytest.approx(terms["loss_ctr"].item() + expected_cvr, rel=1e-6)
    # a batch without clicks contributes nothing to the CVR term (and no NaN)
    _, none_clicked = MultiTaskLoss([CVR])(logits, {"click": torch.zeros(3), "conversion": torch.zeros(3)})
    assert none_clicked["loss_cvr"].item() == 0.0


def test_log_space_ctcvr_is_stable_and_has_finite_gradients_at_the_extremes():
    log_p = torch.tensor([-1e-12, -1e-5, -0.5, -5.0, -80.0], dtype=torch.float64, requires_grad=True)
    expected = torch.log1p(-torch.exp(log_p.detach().clamp(max=-1e-7)))
    assert torch.allclose(log1mexp(log_p), expected, rtol=1e-9)
    bce_from_log_prob(log_p, torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(log_p.grad).all()
    # saturated logits: p_ctcvr rounds to 1 in float32, the loss stays finite
    logits = {"ctr": torch.tensor([40.0, -40.0], requires_grad=True), "cvr": torch.tensor([40.0, 40.0], requires_grad=True)}
    labels = {"click": torch.tensor([0.0, 1.0]), "conversion": torch.tensor([0.0, 1.0])}
    total, _ = ESMMLoss(FunnelPair(CTR, CVR), 0.1)(logits, labels)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v.grad).all() for v in logits.values())
