"""Artifacts and noise on a drawn record, each over its own interval and leads, with the ground
truth a tester scores against.

One signature for every kind: ``make(x, fs, rng, params, ctx) -> x'`` takes the stretch of the
signal the artifact covers ((samples, leads) of those leads) and returns it as the monitor
would see it. Additive kinds (``ADDITIVE``) are scaled to the asked SNR with the Noise Stress
Test's own definition (``noise.py``: S from the clean record's normal QRS complexes per lead, N
from the added waveform's one-second RMS over the artifact's stretch), so the SNR asked for is
the SNR measured; the others (lead-off, saturation) change the signal and have no SNR.

Kinds: ``bw``, ``ma``, ``em`` (NSTDB records), ``powerline`` (50/60 Hz and the harmonics
below Nyquist), ``emg`` (bursts of band-limited muscle noise), ``steps`` (loose-electrode
baseline jumps with an AC-coupled amplifier's exponential recovery), ``respiration`` (a
breathing baseline at the SNR, and amplitude modulation of ``depth``), ``lead_off`` (flat, or
at the ADC rail), ``saturation`` (clipped at a fraction of the lead's QRS height). Pacing
pulses are not here: a 0.1-2 ms pulse does not fit a 250 Hz stream (docs/STRESS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt

from models.stress.noise import NOISE_RECORDS, NoiseError, noise_power, qrs_power, read_noise

RAIL = 32.767  # the 16-bit stream's largest value (stream.segments.GAIN = 1000 per unit)


class ArtifactError(ValueError):
    """An artifact request that cannot be met; the message says which field and why."""


@dataclass(frozen=True)
class Context:
    """What a kind may need besides the stretch: each lead's QRS power S and the NSTDB folder."""

    s_power: np.ndarray
    nstdb: Path | None


Make = Callable[[np.ndarray, float, np.random.Generator, dict, Context], np.ndarray]


@dataclass(frozen=True)
class Kind:
    """An artifact kind: its maker, whether it is added noise (scaled to an SNR), and its
    parameters' defaults and (low, high) limits."""

    make: Make
    additive: bool
    defaults: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """One artifact: ``kind`` from ``start`` to ``end`` (seconds of the record) on ``leads``
    (indices; None: every lead), at ``snr`` dB (additive kinds), with its kind's ``params``."""

    kind: str
    start: float
    end: float
    leads: tuple[int, ...] | None = None
    snr: float | None = None
    params: tuple[tuple[str, object], ...] = ()

    def param(self, name: str) -> object:
        return dict(self.params).get(name, KINDS[self.kind].defaults.get(name))

    def to_dict(self, lead_names: tuple[str, ...] | None = None) -> dict:
        leads = None if self.leads is None else [lead_names[i] if lead_names else i for i in self.leads]
        return {"kind": self.kind, "start": self.start, "end": self.end, "leads": leads, "snr_db": self.snr,
                **dict(self.params)}


def _scaled(noise: np.ndarray, snr: float, ctx: Context, fs: float) -> np.ndarray:
    """``noise`` (samples, leads) less its mean, each lead scaled to ``snr`` against S."""
    out = np.zeros_like(noise, dtype=np.float64)
    for j in range(noise.shape[1]):
        n = noise[:, j] - noise[:, j].mean()
        p = noise_power(n, fs)
        if p > 0:
            out[:, j] = n * math.sqrt(ctx.s_power[j] / (p * 10 ** (snr / 10.0)))
    return out


def _nstdb(name: str) -> Make:
    def make(x: np.ndarray, fs: float, rng: np.random.Generator, params: dict, ctx: Context) -> np.ndarray:
        if ctx.nstdb is None:
            raise ArtifactError(f"{name}: no NSTDB folder to read the noise from")
        noise = read_noise(ctx.nstdb, name, fs, len(x) / fs, seed=int(rng.integers(0, 2**31)))
        cols = noise[:, np.arange(x.shape[1]) % noise.shape[1]]
        return x + _scaled(cols, params["snr"], ctx, fs)
    return make


def _powerline(x, fs, rng, params, ctx):
    t = np.arange(len(x)) / fs
    f0 = float(params["hz"])
    wave = np.zeros(len(x))
    for h in range(1, int(params["harmonics"]) + 1):
        if h * f0 < fs / 2:  # above Nyquist a harmonic would alias: a sampled monitor filters it out
            wave += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h ** 2
    return x + _scaled(np.repeat(wave[:, None], x.shape[1], axis=1), params["snr"], ctx, fs)


def _emg(x, fs, rng, params, ctx):
    n = len(x)
    sos = butter(4, [20.0, min(150.0, 0.45 * fs)], btype="band", fs=fs, output="sos")
    noise = sosfilt(sos, rng.standard_normal((n, x.shape[1])), axis=0)
    env, t = np.zeros(n), 0.0
    while t < n / fs:  # bursts of 0.3-1.5 s; their share of time is about ``duty``
        length = rng.uniform(0.3, 1.5)
        a, b = int(t * fs), min(n, int((t + length) * fs))
        env[a:b] = np.sin(np.linspace(0, np.pi, b - a)) ** 0.5 if b > a else 0.0
        t += length + rng.exponential(length * (1 - params["duty"]) / params["duty"])
    return x + _scaled(noise * env[:, None], params["snr"], ctx, fs)


def _steps(x, fs, rng, params, ctx):
    n = len(x)
    wave = np.zeros((n, x.shape[1]))
    t = np.arange(n) / fs
    at = rng.uniform(0, 1.0 / params["rate"])
    while at < n / fs:  # each jump decays as an AC-coupled input recovers from it
        jump = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5, x.shape[1])
        after = t >= at
        wave[after] += jump * np.exp(-(t[after, None] - at) / params["recovery"])
        at += rng.exponential(1.0 / params["rate"])
    return x + _scaled(wave, params["snr"], ctx, fs)


def _respiration(x, fs, rng, params, ctx):
    t = np.arange(len(x)) / fs
    phase = 2 * np.pi * params["rate"] / 60.0 * t + rng.uniform(0, 2 * np.pi)
    modulated = x * (1.0 + params["depth"] * np.sin(phase))[:, None]
    baseline = np.repeat(np.sin(phase)[:, None], x.shape[1], axis=1)
    return modulated + _scaled(baseline, params["snr"], ctx, fs)


def _lead_off(x, fs, rng, params, ctx):
    return np.full_like(x, RAIL if params["level"] == "rail" else 0.0)


def _saturation(x, fs, rng, params, ctx):
    limit = params["limit"] * np.sqrt(8 * ctx.s_power)  # S = (QRS peak-to-peak)^2 / 8
    return np.clip(x, -limit, limit)


_SNR = {"snr": (-12.0, 36.0)}
KINDS: dict[str, Kind] = {
    **{k: Kind(_nstdb(k), True, {}, _SNR) for k in NOISE_RECORDS},
    "powerline": Kind(_powerline, True, {"hz": 50.0, "harmonics": 3}, {**_SNR, "hz": (45.0, 65.0),
                                                                       "harmonics": (1, 5)}),
    "emg": Kind(_emg, True, {"duty": 0.5}, {**_SNR, "duty": (0.05, 1.0)}),
    "steps": Kind(_steps, True, {"rate": 0.5, "recovery": 0.8}, {**_SNR, "rate": (0.05, 5.0),
                                                                  "recovery": (0.05, 10.0)}),
    "respiration": Kind(_respiration, True, {"rate": 15.0, "depth": 0.1}, {**_SNR, "rate": (4.0, 60.0),
                                                                           "depth": (0.0, 0.5)}),
    "lead_off": Kind(_lead_off, False, {"level": "flat"}, {}),
    "saturation": Kind(_saturation, False, {"limit": 0.4}, {"limit": (0.05, 2.0)}),
}
CHOICES = {"level": ("flat", "rail")}


def artifact(d: dict, lead_names: tuple[str, ...], where: str = "artifact") -> Artifact:
    """An ``Artifact`` from a scenario's entry (``kind``, ``at``, ``duration``, ``snr``, ``leads``
    by name, and the kind's parameters), every field checked.

    Raises:
        ArtifactError: which field is wrong and why.
    """
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in KINDS:
        raise ArtifactError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    spec = KINDS[kind]
    at, duration = d.pop("at", None), d.pop("duration", None)
    for name, v in (("at", at), ("duration", duration)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ArtifactError(f"{where}: {name} must be seconds >= 0")
    if duration <= 0:
        raise ArtifactError(f"{where}: duration must be > 0 s")
    leads = d.pop("leads", None)
    if leads is not None:
        if not isinstance(leads, list) or not leads or any(x not in lead_names for x in leads):
            raise ArtifactError(f"{where}: leads must be a list of the record's leads {list(lead_names)}")
        leads = tuple(sorted({lead_names.index(x) for x in leads}))
    snr = d.pop("snr", None)
    if spec.additive and snr is None:
        raise ArtifactError(f"{where}: {kind} needs snr (dB, NSTDB's definition)")
    if not spec.additive and snr is not None:
        raise ArtifactError(f"{where}: {kind} has no snr")
    params = {}
    for name, v in d.items():
        if name not in spec.defaults:
            known = ", ".join(["at", "duration", "leads"] + (["snr"] if spec.additive else []) + list(spec.defaults))
            raise ArtifactError(f"{where}: {kind} takes no {name!r} (it takes {known})")
        if name in CHOICES:
            if v not in CHOICES[name]:
                raise ArtifactError(f"{where}: {name} must be one of {CHOICES[name]}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArtifactError(f"{where}: {name} must be a number")
        params[name] = v
    for name, v in {"snr": snr, **params}.items():
        lo, hi = spec.limits.get(name, (None, None))
        if lo is not None and v is not None and not lo <= v <= hi:
            raise ArtifactError(f"{where}: {name} must be within {lo:g}..{hi:g}, got {v:g}")
    return Artifact(kind, float(at), float(at + duration), leads, None if snr is None else float(snr),
                    tuple(sorted(params.items())))


def apply(clean: np.ndarray, fs: float, normal_beats: np.ndarray, artifacts: list[Artifact], seed: int,
          nstdb: Path | None) -> tuple[np.ndarray, list[dict]]:
    """``clean`` (samples, leads) with ``artifacts`` applied in order.

    Args:
        normal_beats: sample indices of the record's normal beats (S per lead, as ``nst``).
        seed: the record's seed; the i-th artifact's random numbers come from (seed, i).

    Returns:
        the signal, and per artifact its SNR measured back per lead (additive kinds).

    Raises:
        ArtifactError: no beats to measure S on, or no NSTDB folder for NSTDB noise.
    """
    x = np.asarray(clean, np.float64).copy()
    try:
        s = np.array([qrs_power(clean[:, j], normal_beats, fs) for j in range(clean.shape[1])])
    except NoiseError as exc:
        raise ArtifactError(f"artifacts need beats to measure the QRS amplitude on: {exc}") from None
    measured = []
    for i, a in enumerate(artifacts):
        lo, hi = int(round(a.start * fs)), min(len(x), int(round(a.end * fs)))
        if hi <= lo:
            measured.append({})
            continue
        leads = np.arange(x.shape[1]) if a.leads is None else np.asarray(a.leads)
        params = {**KINDS[a.kind].defaults, **dict(a.params), "snr": a.snr}
        rng = np.random.default_rng((seed & 0x7FFFFFFF, i))
        before = x[lo:hi][:, leads]
        after = KINDS[a.kind].make(before, fs, rng, params, Context(s[leads], nstdb))
        x[lo:hi, leads] = after
        if KINDS[a.kind].additive:  # respiration's amplitude modulation counts as noise here
            measured.append({int(j): round(10 * math.log10(s[j] / noise_power(after[:, k] - before[:, k], fs)), 2)
                             for k, j in enumerate(leads)})
        else:
            measured.append({})
    return x.astype(np.float32), measured
