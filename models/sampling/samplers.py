"""Samplers over one interface, in the manner of diffusers' schedulers.

A sampler gets ``x0_fn(x_t, t) -> x0`` (the denoiser's clean-latent estimate; classifier-free
guidance and in-painting live inside it, one batched forward per step) and walks a subset of the
1,000 training timesteps. All samplers share the noise schedule of training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TRAIN_STEPS = 1000


class NoiseSchedule:
    """ECGTwin's (and Stable Diffusion's) scaled-linear betas, 0.00085 -> 0.012 over 1,000 steps."""

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = TRAIN_STEPS):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.steps = steps
        self._on: dict[torch.device, torch.Tensor] = {}

    def ab(self, t: torch.Tensor | int) -> torch.Tensor:
        """alpha-bar at t; t = -1 means clean (1.0)."""
        t = torch.as_tensor(t)
        # timesteps on a GPU index a copy of the table there, made once: copying it at each call
        # (every denoising step) made the host wait for all the GPU work queued before the step,
        # as a copy from pageable memory does
        ac = self._on.get(t.device)
        if ac is None:
            ac = self._on[t.device] = self.alphas_cumprod.to(t.device)
        out = torch.where(t >= 0, ac[t.clamp(min=0)], torch.ones((), dtype=torch.float64, device=t.device))
        return out.float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab(t).to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab(t).to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab(t).to(x_t.device).view(-1, *([1] * (x_t.dim() - 1)))
        return ab.sqrt() * x_t - (1 - ab).sqrt() * v

    def timesteps(self, n: int) -> list[int]:
        """'Trailing' spacing: the first step is always the noisiest timestep, so one step works."""
        if not 1 <= n <= self.steps:
            raise ValueError(f"steps must be 1..{self.steps}, got {n}")
        ts = torch.linspace(self.steps, 0, n + 1).round().long()[:-1] - 1
        return [int(t) for t in ts]


class Sampler:
    name = "base"

    def __init__(self, schedule: NoiseSchedule | None = None) -> None:
        self.schedule = schedule or NoiseSchedule()

    def sample(self, x0_fn: X0Fn, x_T: torch.Tensor, steps: int | Sequence[int],
               generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _t(self, t: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)

    def _walk(self, steps: int | Sequence[int]):
        """(timestep, next timestep or -1, alpha-bar now, alpha-bar next) along the schedule.

        ``steps`` is a step count (trailing spacing, ending clean) or an explicit descending
        list of timesteps including where to stop (-1 = clean): distillation walks the
        teacher between two of the student's timesteps that way."""
        ts = self.schedule.timesteps(steps) + [-1] if isinstance(steps, int) else [int(t) for t in steps]
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            yield t, t_next, self.schedule.ab(t), self.schedule.ab(t_next)


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta = 0)."""

    name = "ddim"

    def sample(self, x0_fn, x_T, steps, generator=None):
        x = x_T
        for t, _, ab, ab_prev in self._walk(steps):
            x0 = x0_fn(x, self._t(t, x))
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x


class DDPMSampler(Sampler):
    """Ancestral sampling (the reference): posterior q(x_prev | x_t, x0) over the subsequence."""

    name = "ddpm"

    def sample(self, x0_fn, x_T, steps, generator=None):
        x = x_T
        for t, t_next, ab, ab_prev in self._walk(steps):
            x0 = x0_fn(x, self._t(t, x))
            beta = 1 - ab / ab_prev
            mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x
            if t_next >= 0:
                var = beta * (1 - ab_prev) / (1 - ab)
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + var.sqrt() * noise
            else:
                x = mean
        return x


class DPMSolverPP2M(Sampler):
    """DPM-Solver++ (2M), data prediction, first order at the last step (Lu et al., 2022)."""

    name = "dpmpp2m"

    def sample(self, x0_fn, x_T, steps, generator=None):
        x = x_T
        prev_x0, prev_h = None, None
        for t, t_next, ab_s, ab_t in self._walk(steps):
            x0 = x0_fn(x, self._t(t, x))
            if t_next < 0:
                x = x0
                break
            a_s, s_s, a_t, s_t = ab_s.sqrt(), (1 - ab_s).sqrt(), ab_t.sqrt(), (1 - ab_t).sqrt()
            h = torch.log(a_t / s_t) - torch.log(a_s / s_s)
            d = x0
            if prev_x0 is not None:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = (s_t / s_s) * x - a_t * torch.expm1(-h) * d
            prev_x0, prev_h = x0, h
        return x


SAMPLERS: dict[str, type[Sampler]] = {s.name: s for s in (DDPMSampler, DDIMSampler, DPMSolverPP2M)}


def get_sampler(name: str, schedule: NoiseSchedule | None = None) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](schedule)
