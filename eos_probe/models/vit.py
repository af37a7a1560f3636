"""SimpleViT-style vision transformer of the reference setup (docs/theory.md §6).

Patches (p×p) → LayerNorm → Linear(→dim) → LayerNorm, plus a fixed 2-D sin-cos position embedding; ``depth``
pre-norm blocks of multi-head self-attention (qkv and output projections without bias, head size
dim/heads) and an MLP (dim → mlp_dim → dim); final LayerNorm, mean pooling over patches, zero-initialised
linear head. Attention and LayerNorm are written in plain ops: torch's fused SDPA has no double backward
on CPU and vmapped Hessians of ``F.layer_norm`` are wrong (see ``common``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from . import common

DEFAULTS = {"patch": 4, "dim": 64, "depth": 3, "heads": 8, "mlp_dim": 256, "activation": "gelu"}


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed (h·w, dim) embedding: [sin x, cos x, sin y, cos y] at dim/4 geometric frequencies."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = temperature ** (-omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention (no causal mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = common.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                     # (n, heads, t, head_dim)
        scores = (q * (d // self.heads) ** -0.5) @ k.transpose(-1, -2)   # scale the smaller tensor
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    """Pre-norm MLP dim → mlp_dim → dim."""

    def __init__(self, dim: int, mlp_dim: int, activation: str):
        super().__init__()
        self.net = nn.Sequential(common.LayerNorm(dim), nn.Linear(dim, mlp_dim), common.Activation(activation),
                                 nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViT(nn.Module):
    """SimpleViT: patch embedding + sincos positions → residual attention/MLP blocks → mean pool → head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, activation: str):
        super().__init__()
        c, h, w = input_shape
        self.patch = patch
        patch_dim = c * patch * patch
        self.embed = nn.Sequential(common.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), common.LayerNorm(dim))
        # constant, not a parameter; non-persistent so state_dict() holds parameters only
        self.register_buffer("pos", posemb_sincos_2d(h // patch, w // patch, dim).to(torch.float32),
                             persistent=False)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([Attention(dim, heads), FeedForward(dim, mlp_dim, activation)]))
        self.norm = common.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        # (n, c, h, w) -> (n, h/p · w/p, p·p·c), patch pixels ordered (row, col, channel) as in SimpleViT
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), -1)
        x = self.embed(x) + self.pos
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.head(self.norm(x).mean(dim=1))


def build(input_shape: tuple, num_classes: int, *, patch: int, dim: int, depth: int, heads: int,
          mlp_dim: int, activation: str) -> ViT:
    """Build the ViT; the patch must tile the image, heads must divide dim, dim must be a multiple of 4."""
    shape = common.image_shape("vit", input_shape)
    patch = common.pos_int("vit", "patch", patch)
    dim = common.pos_int("vit", "dim", dim)
    depth = common.pos_int("vit", "depth", depth, minimum=0)
    heads = common.pos_int("vit", "heads", heads)
    mlp_dim = common.pos_int("vit", "mlp_dim", mlp_dim)
    if shape[1] % patch or shape[2] % patch:
        raise UserError(f"model 'vit': patch={patch} does not tile a {shape[1]}×{shape[2]} image; "
                        "choose a patch size dividing both sides")
    if dim % heads:
        raise UserError(f"model 'vit': heads={heads} does not divide dim={dim}; choose heads dividing dim")
    if dim % 4:
        raise UserError(f"model 'vit': dim={dim} must be a multiple of 4 (2-D sin-cos position embedding)")
    return ViT(shape, num_classes, patch, dim, depth, heads, mlp_dim, common.activation("vit", activation))
