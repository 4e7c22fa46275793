"""Continuous twin ECG: each new stretch continues the last published samples.

A window of the model is ``W`` samples. Its first ``C`` samples are the patient's published tail,
encoded to latent tokens and held fixed while the rest is denoised (in-painting); the decoded
window's new part is spliced on with a decaying offset so that the first new sample continues
the last published one. Requests of all patients share each denoising batch.
"""

from __future__ import annotations

import base64
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from models.conditions import CardiacState
from models.twin import TwinModel, to_device
from stream.segments import GAIN, quantize

log = logging.getLogger(__name__)


@dataclass
class GenRequest:
    base: np.ndarray
    state: CardiacState
    tail: np.ndarray | None  # (C, leads) last published samples, or None for a new stream
    n_samples: int
    seed: int


def pack_tail(x: np.ndarray) -> str:
    """Base64 of the tail as published: int16 at ``GAIN``."""
    return base64.b64encode(quantize(x).tobytes()).decode()


def unpack_tail(s: str | None, leads: int) -> np.ndarray | None:
    if not s:
        return None
    return np.frombuffer(base64.b64decode(s), "<i2").reshape(-1, leads).astype(np.float32) / GAIN


def extend_tail(tail: np.ndarray | None, new: np.ndarray, context: int) -> np.ndarray:
    """The last ``context`` samples of the stream after ``new`` is appended to ``tail``."""
    if tail is None or len(new) >= context:  # the usual case: no copy of a whole window
        return new[-context:]
    return np.concatenate([tail, new])[-context:]


def patient_seed(patient_id: str, seq: int, window: int = 0) -> int:
    """Deterministic noise per (patient, segment, window): a replay gives the same ECG."""
    return (zlib.crc32(patient_id.encode()) * 1_000_003 + seq * 1009 + window) % (2**31)


class ContinuousGenerator:
    def __init__(self, model: TwinModel, steps: int = 4, sampler: str = "dpmpp2m",
                 guidance: float = 1.5, context_fraction: float = 0.25, splice_samples: int = 12,
                 denoiser: str = "auto", contrast: bool = False) -> None:
        self.model, self.steps, self.guidance = model, steps, guidance
        self.contrast = contrast  # for states that do not say (CardiacState.contrast)
        self.plan = model.plan(sampler, steps, denoiser)
        self.sampler = self.plan.name  # what reports and benchmarks call it
        log.info("denoiser: %s, sampler: %s, %d steps%s", self.plan.denoiser, self.plan.sampler, steps,
                 " (guidance folded in)" if self.plan.denoiser == "student" else f", guidance {guidance}")
        self.window = model.meta.window
        self.context = int(self.window * context_fraction) // 8 * 8
        self.splice = splice_samples

    @property
    def new_per_window(self) -> int:
        return self.window - self.context

    @torch.no_grad()
    def generate(self, requests: list[GenRequest]) -> list[np.ndarray]:
        """At least (n_samples, leads) per request, each continuing its tail: whole windows, so
        that a stream keeps what a window made beyond the request for its next segment."""
        outs: list[list[np.ndarray]] = [[] for _ in requests]
        tails = [r.tail[-self.context:] if r.tail is not None and len(r.tail) >= self.context else None
                 for r in requests]
        produced = [0] * len(requests)
        # a state with contrastive guidance costs a second forward pass per step: its rows go
        # apart, so the batch of every other stream keeps one
        guided = [self.guided(r.state) for r in requests]
        rnd = 0
        while True:
            todo = [i for i, r in enumerate(requests) if produced[i] < r.n_samples]
            if not todo:
                break
            groups = {(has_ctx, g): [i for i in todo if (tails[i] is not None) == has_ctx and guided[i] == g]
                      for has_ctx, g in ((True, False), (False, False), (True, True), (False, True))}
            for (has_ctx, g), group in groups.items():
                if not group:
                    continue
                new = self._windows([requests[i] for i in group], [tails[i] for i in group] if has_ctx else None, rnd,
                                    g)
                for i, x in zip(group, new, strict=True):
                    outs[i].append(x)
                    produced[i] += len(x)
                    tails[i] = extend_tail(tails[i], x, self.context)
            rnd += 1
        return [o[0] if len(o) == 1 else np.concatenate(o) for o in outs]

    def guided(self, state: CardiacState) -> bool:
        """Whether ``state`` is drawn with contrastive guidance: as it says, else as the
        generator is set; never where the model has no weight for its statements."""
        return self.model.meta.guides(state, self.contrast)

    def _windows(self, reqs: list[GenRequest], tails: list[np.ndarray] | None, rnd: int,
                 guided: bool) -> list[np.ndarray]:
        m = self.model
        base = np.stack([r.base for r in reqs])
        seeds = [r.seed + rnd for r in reqs]
        ctx = t = None
        if tails is not None:
            t = to_device(tails, m.device)  # (B, C, leads)
            ctx = m.ae.encode(t.transpose(1, 2).contiguous())
        z = m.generate_latent(base, [r.state for r in reqs], self.steps, seeds, self.plan.sampler,
                              self.guidance, context=ctx, denoiser=self.plan.denoiser,
                              contrast=None if guided else 0.0)
        y = m.decoder(z).float()  # (B, leads, window), where the model runs
        if t is not None:  # the splice runs there too, and only the new part leaves the device
            y = y[..., self.context:]
            ramp = torch.exp(-torch.arange(self.new_per_window, device=y.device) / max(1, self.splice))
            # splice: the first new sample continues the last published one's level and slope
            predicted_next = t[:, -1] + (t[:, -1] - t[:, -2])
            y = y + (predicted_next - y[..., 0])[..., None] * ramp
        return list(to_host(y.transpose(1, 2).contiguous()))


def to_host(x: torch.Tensor) -> np.ndarray:
    """``x`` as a NumPy array; from a GPU through page-locked memory (604 MB: 11 ms, not 400).
    The rows handed to streams are views of that buffer: it goes back to the allocator's cache
    when the last of them is dropped, a few segments later, so a worker holds page-locked memory
    in proportion to its patients (about 37 kB per window in flight)."""
    if x.device.type != "cuda":
        return x.numpy()
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x)
    return out.numpy()


def measure_continuity(gen: ContinuousGenerator, base: np.ndarray, state: CardiacState,
                       segments: int = 10, segment_samples: int = 500, seed: int = 0) -> dict[str, float]:
    """Boundary jumps between consecutive segments next to ordinary sample-to-sample steps
    (absolute differences, all leads): a seamless stream has a ratio near 1."""
    tail, chunks = None, []
    for seq in range(segments):
        out = gen.generate([GenRequest(base, state, tail, segment_samples, seed + seq)])[0][:segment_samples]
        chunks.append(out)
        tail = extend_tail(tail, out, gen.context)
    within = np.concatenate([np.abs(np.diff(c, axis=0)).ravel() for c in chunks])
    jumps = np.concatenate([np.abs(chunks[i + 1][0] - chunks[i][-1]) for i in range(segments - 1)])
    return {"boundary_jump_mean": float(jumps.mean()), "within_step_mean": float(within.mean()),
            "boundary_jump_p99": float(np.percentile(jumps, 99)), "within_step_p99": float(np.percentile(within, 99)),
            "ratio_mean": float(jumps.mean() / max(within.mean(), 1e-12))}
