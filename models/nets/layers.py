"""Building blocks shared by the base extractor and the denoiser."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device) / dim)
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    ang = t.float()[:, None] * freq[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


class ConditionEmbedder(nn.Module):
    """Condition tokens: one per statement slot (learned slot embedding + intensity x code
    embedding), plus heart-rate, age and sex tokens. Fixed length, so batches need no padding
    and an edit that changes one statement changes one token."""

    n_cont = 4

    def __init__(self, n_codes: int, dim: int) -> None:
        super().__init__()
        self.slot = nn.Parameter(torch.randn(n_codes, dim) * 0.02)
        self.code = nn.Parameter(torch.randn(n_codes, dim) * 0.02)
        self.cont_w = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.cont_b = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @property
    def n_tokens(self) -> int:
        return self.slot.shape[0] + 3

    def forward(self, intensities: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        codes = self.slot[None] + intensities[..., None] * self.code[None]
        vals = cont[:, :3].clone()
        vals[:, 1] = vals[:, 1] * cont[:, 3]  # unknown age contributes its bias only
        scal = vals[..., None] * self.cont_w[None] + self.cont_b[None]
        return self.mlp(torch.cat([codes, scal], dim=1))
