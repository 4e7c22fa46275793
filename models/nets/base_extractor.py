"""Individual Base Extractor (IBE): the part of an ECG that belongs to the person.

Each layer self-attends over the latent sequence, then cross-attends to the record's own
condition tokens and *subtracts* what they explain (x - relu(attn)), so the pooled vector keeps
what the stated condition cannot account for. Trained contrastively (symmetric InfoNCE).

With few same-patient pairs across states, contrastive training still learns rhythm and rate as
part of "who" (a linear probe read AFIB at AUROC 0.92, heart rate at R^2 0.69). An optional
fixed affine *erasure* on the pooled vector (LEACE, fitted by ``twin-engine train erase``,
models/training/erasure.py) removes what is linearly readable of the rhythm layer's states.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.layers import ConditionEmbedder, sinusoidal_positions


@dataclass
class IBEConfig:
    latent_channels: int = 4
    dim: int = 128
    depth: int = 2
    heads: int = 4
    base_dim: int = 256
    n_codes: int = 20
    erase_rank: int = 0  # rank of the fitted state erasure (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


class IBELayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.n2(x)
        x = x - F.relu(self.cross(h, cond, cond, need_weights=False)[0])
        return x + self.mlp(self.n3(x))


class BaseExtractor(nn.Module):
    def __init__(self, cfg: IBEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or IBEConfig()
        self.inp = nn.Conv1d(cfg.latent_channels, cfg.dim, 3, padding=1)
        self.cond = ConditionEmbedder(cfg.n_codes, cfg.dim)
        self.layers = nn.ModuleList(IBELayer(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.base_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's start
        if cfg.erase_rank:  # v -> v - A B^T (v - mean); absent (not identity) so older weights keep their id
            self.register_buffer("erase_mean", torch.zeros(cfg.base_dim))
            self.register_buffer("erase_a", torch.zeros(cfg.base_dim, cfg.erase_rank))
            self.register_buffer("erase_b", torch.zeros(cfg.base_dim, cfg.erase_rank))

    def forward(self, z: torch.Tensor, intensities: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        """(B, C, N) latent + the record's own condition -> (B, base_dim) unit vectors."""
        x = self.inp(z).transpose(1, 2)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device)
        cond = self.cond(intensities, cont)
        for layer in self.layers:
            x = layer(x, cond)
        return F.normalize(self.out(x.mean(dim=1)), dim=-1)

    def pool(self, bases: torch.Tensor) -> torch.Tensor:
        """Per-window vectors (..., base_dim) of one patient -> its base vector: the mean
        direction (over the first axis), erased of the fitted states where an erasure is set."""
        return self.erase(combine(bases))

    def erase(self, v: torch.Tensor) -> torch.Tensor:
        """(..., base_dim) unit vectors -> the same with the fitted states erased. Not
        renormalised (norms of held-out vectors 0.7-1.1): the norm varies with the concepts, and
        dividing by it put them back (training records' linear fit to them: r 0.91 renormalised,
        1e-8 not)."""
        if not self.cfg.erase_rank:
            return v
        return v - ((v - self.erase_mean) @ self.erase_b) @ self.erase_a.t()


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
             same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; ``same[i, j]`` masks off-diagonal pairs of one patient (not negatives)."""
    logits = logit_scale.clamp(max=4.6052).exp() * a @ b.t()
    if same is not None:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def combine(bases: torch.Tensor) -> torch.Tensor:
    """Several reference ECGs of one patient -> one base vector (mean direction)."""
    return F.normalize(bases.mean(dim=0), dim=-1)
