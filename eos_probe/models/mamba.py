"""Mamba (selective state-space) language model of the reference setup (docs/theory.md §6).

Token embedding → ``layers`` residual blocks x + Mixer(RMSNorm(x)) → RMSNorm → linear head (no bias, init
scaled by ``head_scale``). The mixer follows Mamba-1: in_proj to two branches (x, z) of width expand·d_model;
x goes through a causal depthwise conv (d_conv taps) and SiLU, then the selective SSM

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,   y_t = C_t · h_t + D x_t,   Δ_t = softplus(W_dt r_t + b_dt)

with (r_t, B_t, C_t) = x_proj(x_t) (r of size dt_rank); the output y ⊙ SiLU(z) is projected back to d_model.
The scan is sequential over time in plain ops: parallel scans and the CUDA kernels break higher-order
autodiff. The depthwise conv is written as a sum of shifted products for the same reason.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import common

DEFAULTS = {"d_model": 64, "layers": 2, "d_state": 16, "expand": 2, "d_conv": 4, "dt_rank": 4,
            "head_scale": 0.1}

_BASE_STD = 0.02              # init std of linear layers and the embedding (as GPT-2 / mamba.py)
_DT_MIN, _DT_MAX = 1e-3, 1e-1  # initial step sizes Δ, log-uniform


class Mixer(nn.Module):
    """The Mamba block without its norm and residual connection: (n, L, D) → (n, L, D)."""

    def __init__(self, d_model: int, d_state: int, expand: int, d_conv: int, dt_rank: int):
        super().__init__()
        inner = expand * d_model
        self.inner, self.d_state, self.dt_rank, self.d_conv = inner, d_state, dt_rank, d_conv
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        # depthwise conv taps (inner, d_conv), torch Conv1d's default init (fan_in = d_conv)
        bound = 1.0 / math.sqrt(d_conv)
        self.conv_weight = nn.Parameter(torch.empty(inner, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(inner).uniform_(-bound, bound))
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        for lin in (self.in_proj, self.x_proj, self.out_proj):
            nn.init.normal_(lin.weight, std=_BASE_STD)
        # Δ starts log-uniform in [_DT_MIN, _DT_MAX]: bias = softplus⁻¹(Δ) (Mamba's dt init)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(_DT_MAX) - math.log(_DT_MIN)) + math.log(_DT_MIN))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real init A = -(1, ..., d_state) per channel, stored as log so A stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))

    def _causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        xp = F.pad(x, (0, 0, self.d_conv - 1, 0))       # zeros before t = 0
        out = self.conv_bias
        for k in range(self.d_conv):                     # tap k sees x_{t - (d_conv - 1 - k)}
            out = out + xp[:, k:k + length] * self.conv_weight[:, k]
        return out

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)          # (n, L, inner) each
        x = F.silu(self._causal_conv(x))
        r, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(r))              # (n, L, inner)
        a = -torch.exp(self.A_log)                        # (inner, N)
        decay = torch.exp(delta.unsqueeze(-1) * a)        # (n, L, inner, N)
        drive = (delta * x).unsqueeze(-1) * b.unsqueeze(2)  # (n, L, inner, N)
        h = u.new_zeros(u.shape[0], self.inner, self.d_state)
        ys = []
        for t in range(u.shape[1]):
            h = decay[:, t] * h + drive[:, t]
            ys.append((h * c[:, t].unsqueeze(1)).sum(-1))
        y = torch.stack(ys, dim=1) + x * self.D
        return self.out_proj(y * F.silu(z))


class Block(nn.Module):
    """x + Mixer(RMSNorm(x))."""

    def __init__(self, d_model: int, **mixer: int):
        super().__init__()
        self.norm = common.RMSNorm(d_model)
        self.mixer = Mixer(d_model, **mixer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class MambaModel(nn.Module):
    """tokens (n, L) → logits (n, L, vocab); position t depends on tokens ≤ t only."""

    def __init__(self, vocab: int, d_model: int, layers: int, head_scale: float, **mixer: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=_BASE_STD)
        self.blocks = nn.ModuleList(Block(d_model, **mixer) for _ in range(layers))
        self.norm = common.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        nn.init.normal_(self.head.weight, std=_BASE_STD * head_scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build(input_shape: tuple, num_classes: int, *, d_model: int, layers: int, d_state: int, expand: int,
          d_conv: int, dt_rank: int, head_scale: float) -> MambaModel:
    """Build the Mamba model; ``num_classes`` is the vocabulary size (inputs and outputs share it)."""
    common.sequence_shape("mamba", input_shape)
    name = "mamba"
    return MambaModel(num_classes, common.pos_int(name, "d_model", d_model), common.pos_int(name, "layers", layers),
                      common.pos_float(name, "head_scale", head_scale, allow_zero=True),
                      d_state=common.pos_int(name, "d_state", d_state), expand=common.pos_int(name, "expand", expand),
                      d_conv=common.pos_int(name, "d_conv", d_conv), dt_rank=common.pos_int(name, "dt_rank", dt_rank))
