"""1-D convolutional VAE: 12 x T ECG <-> C x T/8 latent.

Generation denoises a latent and decodes it once, so at 1-4 sampling steps the decoder is
most of the cost: it stays narrow (channels shrink as resolution grows) and has no attention.
Fully convolutional, so any length divisible by 8 works, and a long record can be encoded in
one pass and cut into latent windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AEConfig:
    leads: int = 12
    latent_channels: int = 4
    enc_channels: tuple[int, ...] = (64, 96, 128)
    dec_channels: tuple[int, ...] = (128, 64, 32)
    kl_weight: float = 1e-4

    def to_dict(self) -> dict:
        return asdict(self)


def _res(ch: int) -> nn.Module:
    return nn.Sequential(nn.Conv1d(ch, ch, 5, padding=2), nn.GroupNorm(8, ch), nn.SiLU(),
                         nn.Conv1d(ch, ch, 5, padding=2))


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = _res(ch)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Encoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.enc_channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.leads, ch[0], 7, padding=3), nn.SiLU()]
        prev = ch[0]
        for c in ch:
            layers += [nn.Conv1d(prev, c, 4, stride=2, padding=1), nn.SiLU(), ResBlock(c)]
            prev = c
        layers += [nn.Conv1d(prev, 2 * cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar.clamp(-20, 10)


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.dec_channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_channels, ch[0], 3, padding=1), nn.SiLU(),
                                   ResBlock(ch[0])]
        prev = ch[0]
        for c in ch:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv1d(prev, c, 5, padding=2), nn.SiLU()]
            prev = c
        layers += [nn.Conv1d(prev, cfg.leads, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ECGAutoencoder(nn.Module):
    """``encode`` returns the mean latent scaled to unit variance (``latent_scale``)."""

    compression = 8

    def __init__(self, cfg: AEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or AEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.register_buffer("latent_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, KL) for training."""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        return self.decoder(z), kl

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, leads, T) -> (B, C, T/8) scaled latent."""
        mu, _ = self.encoder(x)
        return mu / self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z * self.latent_scale)
