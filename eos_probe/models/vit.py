"""SimpleViT-style vision transformer of the reference setup (docs/theory.md §6).

Patches (p×p) → LayerNorm → Linear(→dim) → LayerNorm, plus a fixed 2-D sin-cos position embedding; ``depth``
pre-norm blocks of multi-head self-attention (qkv and output projections without bias, head size
dim/heads) and an MLP (dim → mlp_dim → dim); final LayerNorm, mean pooling over patches, zero-initialised
linear head. Attention and LayerNorm are written in plain ops: torch's fused SDPA has no double backward
on CPU and vmapped Hessians of ``F.layer_norm`` are wrong (see ``common``).

Options for hybrid ZO/FO training (ZO-FC, docs/theory.md §5b):

- ``adapter=r`` (0 = none; ``True`` means rank 5): an AdaptFormer-style bottleneck per block, parallel to
  the MLP, ``x + ff(x) + 0.1·up(gelu(down(x)))`` with d→r→d projections (with biases) and the up-projection
  zero-initialised, so at initialisation the model computes exactly the adapter-free ViT. The adapters are
  drawn after every base weight and are the last parameters of the flat θ, so the base weights (and their
  flat positions) are those of the adapter-free ViT with the same seed.
- ``head="cosine"``: logits = s·(f/‖f‖)·(w_c/‖w_c‖) with a **fixed** scale s = ``cosine_scale`` (default 10),
  no bias. Fixed, not learnable: a learnable scale (temperature) grows without bound under cross-entropy on
  separable data and carries the sharpness with it, which would confound the curvature being measured; a
  fixed s keeps the logit range [−s, s] a known hyperparameter. Its class weights keep torch's default
  Linear draw (a cosine head cannot start at zero), so the body weights are those of the linear-head ViT.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from . import common

DEFAULTS = {"patch": 4, "dim": 64, "depth": 3, "heads": 8, "mlp_dim": 256, "activation": "gelu", "adapter": 0,
            "head": "linear", "cosine_scale": 10.0}
#: adapter rank when adapters are asked for without one (``adapter=True``)
DEFAULT_ADAPTER_RANK = 5
#: output scale of every adapter (AdaptFormer's s)
ADAPTER_SCALE = 0.1
HEADS = ("linear", "cosine")


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


class Adapter(nn.Module):
    """Bottleneck dim → rank → dim, GELU, output ×0.1; the up-projection starts at zero (output 0)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ADAPTER_SCALE * self.up(torch.nn.functional.gelu(self.down(x)))


class CosineHead(nn.Module):
    """Cosine classifier: scale · normalised features · normalised class weights (fixed scale, no bias)."""

    def __init__(self, dim: int, num_classes: int, scale: float):
        super().__init__()
        self.scale = scale
        # torch's default Linear draw (the linear head's, before it is zeroed): same RNG use as the linear head
        self.weight = nn.Linear(dim, num_classes).weight

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # rsqrt(‖·‖² + ε) rather than F.normalize: smooth, with plain double backward and forward-over-reverse
        f = f * torch.rsqrt((f * f).sum(-1, keepdim=True) + 1e-12)
        w = self.weight * torch.rsqrt((self.weight * self.weight).sum(-1, keepdim=True) + 1e-12)
        return self.scale * (f @ w.T)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g} (fixed)"


class ViT(nn.Module):
    """SimpleViT: patch embedding + sincos positions → residual attention/MLP blocks → mean pool → head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, activation: str, adapter: int = 0, head: str = "linear",
                 cosine_scale: float = 10.0):
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
        if head == "cosine":
            self.head = CosineHead(dim, num_classes, cosine_scale)
        else:
            self.head = nn.Linear(dim, num_classes)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        # drawn after (and registered after) every base weight: the base weights and their flat-θ
        # positions are those of the adapter-free ViT with the same seed
        self.adapters = nn.ModuleList(Adapter(dim, adapter) for _ in range(depth)) if adapter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        # (n, c, h, w) -> (n, h/p · w/p, p·p·c), patch pixels ordered (row, col, channel) as in SimpleViT
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), -1)
        x = self.embed(x) + self.pos
        for i, (attn, ff) in enumerate(self.layers):
            x = x + attn(x)
            if self.adapters is None:
                x = x + ff(x)
            else:  # AdaptFormer: the adapter runs parallel to the MLP, on the same residual stream
                x = x + ff(x) + self.adapters[i](x)
        return self.head(self.norm(x).mean(dim=1))

    def param_groups(self) -> dict[str, list[str]]:
        """``adapter`` (empty without adapters), ``head`` (the classifier), ``body`` (everything else)."""
        names = [n for n, _ in self.named_parameters()]
        adapter = [n for n in names if n.startswith("adapters.")]
        head = [n for n in names if n.startswith("head.")]
        return {"adapter": adapter, "head": head, "body": [n for n in names if n not in adapter and n not in head]}


def adapter_rank(value: object) -> int:
    """The ``adapter`` option as a rank: 0/False/"none" = no adapters, True/"true" = rank 5, else an int >= 1."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "false", "no", "off", "none"):
        value = value.strip().lower() in ("true", "yes", "on")
    if value is True:
        return DEFAULT_ADAPTER_RANK
    if value is False or value is None or value == 0:
        return 0
    return common.pos_int("vit", "adapter", value)


def build(input_shape: tuple, num_classes: int, *, patch: int, dim: int, depth: int, heads: int,
          mlp_dim: int, activation: str, adapter: object = 0, head: str = "linear",
          cosine_scale: float = 10.0) -> ViT:
    """Build the ViT; the patch must tile the image, heads must divide dim, dim must be a multiple of 4.

    ``adapter``: rank r of a d→r→d adapter per block (0 = none, True = 5); ``head``: "linear" (zero-initialised)
    or "cosine" (fixed scale ``cosine_scale``).
    """
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
    rank = adapter_rank(adapter)
    head = common.choice("vit", "head", head, HEADS)
    scale = common.pos_float("vit", "cosine_scale", cosine_scale)
    return ViT(shape, num_classes, patch, dim, depth, heads, mlp_dim, common.activation("vit", activation),
               rank, head, scale)
