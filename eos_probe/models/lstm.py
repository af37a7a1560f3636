"""Stacked LSTM language model of the reference setup (docs/theory.md §6).

Token embedding → ``layers`` hand-written LSTM cells unrolled over time → linear head over the vocabulary.
``nn.LSTM`` is not used: its fused (cuDNN) kernels have no double backward, so no Hessian-vector products
on GPU. Each cell has one bias vector (torch's two biases b_ih + b_hh are redundant: they add a flat
direction to the Hessian and double the bias learning rate).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import common

DEFAULTS = {"embed": 48, "hidden": 48, "layers": 2}


class LSTMLayer(nn.Module):
    """One LSTM cell (gate order i, f, g, o) run over a whole sequence from a zero state."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        bound = 1.0 / math.sqrt(hidden_size)
        self.w_ih = nn.Parameter(torch.empty(input_size, 4 * hidden_size).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(hidden_size, 4 * hidden_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        pre = x @ self.w_ih + self.bias            # input contributions for all steps at once
        h = x.new_zeros(n, self.hidden_size)
        c = x.new_zeros(n, self.hidden_size)
        outs = []
        for t in range(length):
            gates = pre[:, t] + h @ self.w_hh
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)


class LSTMModel(nn.Module):
    """tokens (n, L) → logits (n, L, vocab); position t depends on tokens ≤ t only."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.layers = nn.ModuleList(LSTMLayer(embed if i == 0 else hidden, hidden) for i in range(layers))
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build(input_shape: tuple, num_classes: int, *, embed: int, hidden: int, layers: int) -> LSTMModel:
    """Build the LSTM; ``num_classes`` is the vocabulary size (inputs and outputs share it)."""
    common.sequence_shape("lstm", input_shape)
    return LSTMModel(num_classes, common.pos_int("lstm", "embed", embed), common.pos_int("lstm", "hidden", hidden),
                     common.pos_int("lstm", "layers", layers))
