"""The denoiser: a DiT over latent tokens with the AdaX condition injector.

Two pathways in every block, each switchable for the ablation:
- adaLN-Zero, driven by timestep + projected base vector (global: who, and how noisy);
- cross-attention from the signal tokens to the condition tokens (clinical state).
With adaLN off, timestep and base vector are added to the tokens instead; with cross-attention
off, the mean condition token joins the adaLN input. The model predicts v (v-parameterisation),
which keeps every step count, including distilled 1-step sampling, well conditioned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.layers import ConditionEmbedder, sinusoidal_positions, timestep_embedding


@dataclass
class DiTConfig:
    latent_channels: int = 4
    tokens: int = 128  # latent length of one window
    patch: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    base_dim: int = 256
    n_codes: int = 20
    use_adaln: bool = True
    use_cross: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionController(Protocol):
    """Sees (and may replace) attention probabilities: how editing re-uses a source's maps."""

    def __call__(self, kind: str, layer: int, probs: torch.Tensor) -> torch.Tensor: ...


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kind: str, layer: int) -> None:
        super().__init__()
        self.heads, self.kind, self.layer = heads, kind, layer
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor,
                controller: AttentionController | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        if controller is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            probs = (q @ k.transpose(-1, -2) * (d // h) ** -0.5).softmax(-1)
            out = controller(self.kind, self.layer, probs) @ v
        return self.o(out.transpose(1, 2).reshape(b, n, d))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaXBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int) -> None:
        super().__init__()
        d = cfg.dim
        self.use_adaln, self.use_cross = cfg.use_adaln, cfg.use_cross
        self.n1 = nn.LayerNorm(d, elementwise_affine=not cfg.use_adaln, eps=1e-6)
        self.n3 = nn.LayerNorm(d, elementwise_affine=not cfg.use_adaln, eps=1e-6)
        self.attn = Attention(d, cfg.heads, "self", layer)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        if cfg.use_cross:
            self.n2 = nn.LayerNorm(d, eps=1e-6)
            self.cross = Attention(d, cfg.heads, "cross", layer)
        if cfg.use_adaln:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
            nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: each block starts as identity
            nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor,
                controller: AttentionController | None = None) -> torch.Tensor:
        if self.use_adaln:
            s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
            x = x + g1[:, None] * self.attn(h := modulate(self.n1(x), s1, sc1), h, controller)
        else:
            h = self.n1(x)
            x = x + self.attn(h, h, controller)
        if self.use_cross:
            x = x + self.cross(self.n2(x), cond, controller)
        if self.use_adaln:
            x = x + g2[:, None] * self.mlp(modulate(self.n3(x), s2, sc2))
        else:
            x = x + self.mlp(self.n3(x))
        return x


class AdaXDiT(nn.Module):
    def __init__(self, cfg: DiTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DiTConfig()
        d = cfg.dim
        self.patch_in = nn.Linear(cfg.latent_channels * cfg.patch, d)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.base_proj = nn.Linear(cfg.base_dim, d)
        self.cond = ConditionEmbedder(cfg.n_codes, d)
        self.null_cond = nn.Parameter(torch.zeros(self.cond.n_tokens, d))
        self.blocks = nn.ModuleList(AdaXBlock(cfg, i) for i in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, cfg.latent_channels * cfg.patch)
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def condition_tokens(self, intensities: torch.Tensor, cont: torch.Tensor,
                         drop: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K+3, dim); rows where ``drop`` is true get the learned null condition (CFG)."""
        tokens = self.cond(intensities, cont)
        if drop is not None:
            tokens = torch.where(drop[:, None, None], self.null_cond[None].to(tokens.dtype), tokens)
        return tokens

    def forward(self, z: torch.Tensor, t: torch.Tensor, base: torch.Tensor, cond: torch.Tensor,
                controller: AttentionController | None = None) -> torch.Tensor:
        """z (B, C, N) noisy latent, t (B,) timesteps, base (B, base_dim), cond (B, M, dim)."""
        b, ch, n = z.shape
        p = self.cfg.patch
        x = self.patch_in(z.view(b, ch, n // p, p).permute(0, 2, 1, 3).reshape(b, n // p, ch * p))
        x = x + sinusoidal_positions(n // p, x.shape[-1], z.device).to(x.dtype)
        c = self.t_mlp(timestep_embedding(t, self.cfg.dim).to(x.dtype)) + self.base_proj(base)
        if not self.cfg.use_cross:
            c = c + cond.mean(dim=1)
        if not self.cfg.use_adaln:
            x = x + c[:, None]
            if self.cfg.use_cross:
                cond = torch.cat([cond, self.base_proj(base)[:, None]], dim=1)
        for blk in self.blocks:
            x = blk(x, c, cond, controller)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        x = self.out(modulate(self.norm_out(x), shift, scale))
        return x.view(b, n // p, ch, p).permute(0, 2, 1, 3).reshape(b, ch, n)
