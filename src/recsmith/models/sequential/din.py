"""DIN: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018.

An activation unit scores every history item k against the candidate q from
[k, q, k⊙q, k−q]; the history is sum-pooled with those weights into the user interest.
As in the paper the weights are not softmax-normalised (the pooled vector keeps how strong
the interest is); padding gets weight 0. The interest, projected to `interest_dim`, and the
candidate, projected by the same layer, feed an MLP on [u, c, u⊙c] → one logit.

Ablations (`cfg.din`, all off by default): `time_decay` multiplies each weight by
exp(−softplus(λ)·age_days) with λ learnt; `multi_head` splits the embedding into `num_heads`
chunks, each with its own activation unit, and concatenates the pooled chunks;
`enhanced_mlp` replaces the plain MLP by residual blocks with LayerNorm and dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recsmith.models.layers.mlp import MLP

INITIAL_DECAY_PER_DAY = 0.01  # softplus(λ) at start: a weight halves in about 69 days


class HeadwiseMLP(nn.Module):
    """`num_heads` independent ReLU MLPs ending in one unit, run as one batched matmul per
    layer: `[..., h, in_dim]` → `[..., h, 1]`."""

    def __init__(self, num_heads: int, in_dim: int, hidden_dims: list[int]):
        super().__init__()
        dims = [in_dim, *hidden_dims, 1]
        self.weights = nn.ParameterList(torch.empty(num_heads, a, b) for a, b in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(torch.empty(num_heads, b) for b in dims[1:])
        for weight, bias in zip(self.weights, self.biases):
            bound = weight.size(1) ** -0.5  # nn.Linear's default range
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._rest(torch.einsum("...hi,hio->...ho", x, self.weights[0]) + self.biases[0])

    def activation_unit(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """`forward([k, q, k⊙q, k−q])` without building the concatenation: the first layer
        is linear, so W·[k, q, k⊙q, k−q] = (W_k + W_d)·k + (W_q − W_d)·q + W_p·(k⊙q), and
        the query term is computed once per row. keys `[B, L, h, d]`, query `[B, h, d]` →
        `[B, L, h, 1]`, equal to forward() up to rounding (tested)."""
        w_k, w_q, w_p, w_d = self.weights[0].split(keys.shape[-1], dim=1)  # each [h, d, H1]
        first = (torch.einsum("blhd,hdo->blho", keys, w_k + w_d)
                 + torch.einsum("bhd,hdo->bho", query, w_q - w_d).unsqueeze(1)
                 + torch.einsum("blhd,hdo->blho", keys * query.unsqueeze(1), w_p) + self.biases[0])
        return self._rest(first)

    def _rest(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the first one's affine part."""
        for weight, bias in zip(self.weights[1:], self.biases[1:]):
            x = torch.einsum("...hi,hio->...ho", torch.relu(x), weight) + bias
        return x


class ResidualBlock(nn.Module):
    """x + Dropout(W₂ Dropout(relu(W₁ LayerNorm(x)))): `[B, dim]` → `[B, dim]`."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualMLP(nn.Sequential):
    """Per width: Linear then a residual block; a final LayerNorm. `[B, in_dim]` → `[B, hidden_dims[-1]]`."""

    def __init__(self, in_dim: int, hidden_dims: list[int], dropout: float):
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(in_dim, width), ResidualBlock(width, dropout)]
            in_dim = width
        super().__init__(*layers, nn.LayerNorm(in_dim))
        self.out_dim = in_dim


class DIN(nn.Module):
    """history `[B, L]` (right-padded, 0 = padding), history_age_days `[B, L]`, candidate `[B]` → logit `[B]`."""

    def __init__(self, num_items: int, max_length: int, cfg):
        super().__init__()
        din, dim = cfg.din, cfg.hidden_dim
        self.num_heads = din.num_heads if din.multi_head else 1
        if dim % self.num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by din.num_heads {self.num_heads}")
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.attention = HeadwiseMLP(self.num_heads, 4 * dim // self.num_heads, din.attention_hidden_dims)
        self.decay = (nn.Parameter(torch.tensor(math.log(math.expm1(INITIAL_DECAY_PER_DAY))))
                      if din.time_decay else None)
        self.interest_projection = nn.Linear(dim, din.interest_dim)
        in_dim = 3 * din.interest_dim
        self.mlp = (ResidualMLP(in_dim, din.mlp_hidden_dims, cfg.dropout) if din.enhanced_mlp
                    else MLP(in_dim, din.mlp_hidden_dims))
        self.output = nn.Linear(self.mlp.out_dim, 1)

    def interest(self, history: torch.Tensor, history_age_days: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """The candidate-aware user interest, projected: `[B, interest_dim]`."""
        batch, length = history.shape
        keys = self.item_embedding(history).view(batch, length, self.num_heads, -1)  # [B, L, D] → [B, L, h, D/h]
        query = self.item_embedding(candidate).view(batch, self.num_heads, -1)  # [B, h, D/h]
        weights = self.attention.activation_unit(keys, query)  # [B, L, h, 1] from [k, q, k⊙q, k−q]
        if self.decay is not None:
            weights = weights * torch.exp(-F.softplus(self.decay) * history_age_days).view(batch, length, 1, 1)
        weights = weights.masked_fill((history == 0).view(batch, length, 1, 1), 0.0)
        pooled = (weights * keys).sum(1).reshape(batch, -1)  # [B, h, D/h] → [B, D]
        return self.interest_projection(pooled)

    def forward(self, history: torch.Tensor, history_age_days: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.score(self.interest(history, history_age_days, candidate), candidate)

    def score(self, user: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """The logit `[B]` from the interest `[B, I]` (see `interest`) and the candidate `[B]`."""
        item = self.interest_projection(self.item_embedding(candidate))  # [B, I], same space as user
        return self.output(self.mlp(torch.cat([user, item, user * item], dim=-1))).squeeze(-1)
