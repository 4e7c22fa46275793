"""Artifacts and noise on a drawn record, each over its own interval and leads, with the ground
truth a tester scores against.

Every artifact is drawn by a ``Drawn``: made once (its random choices, and its gain per lead
for the asked SNR, from the whole interval), it then draws itself on any window of the stream,
so a stream cut into segments anywhere gets the same samples as one record (tested). Additive
kinds (``ADDITIVE``) add a waveform scaled to the asked SNR with the Noise Stress Test's own
definition (``noise.py``: S from the clean signal's normal QRS complexes per lead, N from the
added waveform's one-second RMS over the artifact's whole interval), so the SNR asked for is the
SNR measured; the others (lead-off, saturation) change the signal and have no SNR.

Kinds: ``bw``, ``ma``, ``em`` (NSTDB records), ``powerline`` (50/60 Hz and the harmonics
below Nyquist), ``emg`` (bursts of band-limited muscle noise), ``steps`` (loose-electrode
baseline jumps with an AC-coupled amplifier's exponential recovery), ``respiration`` (a
breathing baseline at the SNR, and amplitude modulation of ``depth``), ``lead_off`` (flat, or
at the ADC rail), ``saturation`` (clipped at a fraction of the lead's QRS height). Pacing
pulses are not here: a 0.1-2 ms pulse does not fit a 250 Hz stream (docs/STRESS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import firwin

from models.stress.noise import (
    NOISE_RECORDS,
    TRIM,
    NoiseError,
    noise_power,
    noise_record,
    qrs_power,
)

RAIL = 32.767  # the 16-bit stream's largest value (stream.segments.GAIN = 1000 per unit)


class ArtifactError(ValueError):
    """An artifact request that cannot be met; the message says which field and why."""


@dataclass(frozen=True)
class Kind:
    """An artifact kind: whether it is added noise (scaled to an SNR), and its parameters'
    defaults and (low, high) limits."""

    additive: bool
    defaults: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """One artifact: ``kind`` from ``start`` to ``end`` (seconds of the stream) on ``leads``
    (indices; None: every lead), at ``snr`` dB (additive kinds), with its kind's ``params``."""

    kind: str
    start: float
    end: float
    leads: tuple[int, ...] | None = None
    snr: float | None = None
    params: tuple[tuple[str, object], ...] = ()

    def named_leads(self, lead_names: tuple[str, ...]) -> tuple[str, ...] | None:
        """Its leads by name (None: every lead)."""
        return None if self.leads is None else tuple(lead_names[i] for i in self.leads)

    def to_dict(self, lead_names: tuple[str, ...] | None = None) -> dict:
        leads = None if self.leads is None else list(self.named_leads(lead_names) if lead_names else self.leads)
        return {"kind": self.kind, "start": self.start, "end": self.end, "leads": leads, "snr_db": self.snr,
                **dict(self.params)}

    @staticmethod
    def from_dict(d: dict) -> Artifact:
        """From ``to_dict`` without lead names (a stream position); ArtifactError if damaged."""
        try:
            params = {k: v for k, v in d.items() if k not in ("kind", "start", "end", "leads", "snr_db")}
            leads = None if d["leads"] is None else tuple(int(i) for i in d["leads"])
            return Artifact(str(d["kind"]), float(d["start"]), float(d["end"]), leads,
                            None if d["snr_db"] is None else float(d["snr_db"]), tuple(sorted(params.items())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"not an artifact record: {exc}") from None


_NSTDB_CACHE: dict[tuple[str, str, float], np.ndarray] = {}
BLOCK = 256  # EMG's white noise comes in blocks of this many samples, each seeded by its index


def _nstdb_record(nstdb: Path, kind: str, fs: float) -> np.ndarray:
    """A whole NSTDB noise record at ``fs`` (``noise.noise_record``, cached: read once per process)."""
    key = (str(nstdb), kind, float(fs))
    if key not in _NSTDB_CACHE:
        _NSTDB_CACHE[key] = noise_record(nstdb, kind, fs).astype(np.float32)
    return _NSTDB_CACHE[key]


class Drawn:
    """An artifact ready to draw on any window of its stream.

    Args:
        artifact: what, when, where.
        fs: the stream's rate.
        s_power: (leads,) each lead's QRS power S (``noise.qrs_power``), for the SNR and
            saturation.
        seed: the artifact's own seed (its random choices).
        nstdb: the NSTDB folder (bw, ma, em).

    Raises:
        ArtifactError: NSTDB noise without its folder.
    """

    def __init__(self, artifact: Artifact, fs: float, s_power: np.ndarray, seed: int, nstdb: Path | None) -> None:
        self.a, self.fs = artifact, float(fs)
        self.leads = None if artifact.leads is None else np.asarray(artifact.leads)
        k = len(s_power) if self.leads is None else len(self.leads)
        self.s = np.asarray(s_power, np.float64) if self.leads is None else np.asarray(s_power, np.float64)[self.leads]
        self.n = max(0, int(round((artifact.end - artifact.start) * fs)))
        self.params = {**KINDS[artifact.kind].defaults, **dict(artifact.params)}
        rng = np.random.default_rng(seed & 0x7FFFFFFF)
        kind, p = artifact.kind, self.params
        self.seed = int(rng.integers(0, 2**31))
        if kind in NOISE_RECORDS:
            if nstdb is None:
                raise ArtifactError(f"{kind}: no NSTDB folder to read the noise from")
            self.record = _nstdb_record(nstdb, kind, fs)
            self.offset = int(rng.integers(0, len(self.record)))
        elif kind == "powerline":
            self.phases = rng.uniform(0, 2 * np.pi, int(p["harmonics"]))
        elif kind == "emg":
            self.taps = firwin(63, [20.0, min(150.0, 0.45 * fs)], pass_zero=False, fs=fs)
            bursts, t = [], 0.0
            while t < self.n / fs:  # bursts of 0.3-1.5 s; their share of time is about ``duty``
                length = rng.uniform(0.3, 1.5)
                bursts.append((int(t * fs), int((t + length) * fs)))
                t += length + rng.exponential(length * (1 - p["duty"]) / p["duty"])
            self.bursts = bursts
        elif kind == "steps":
            jumps, t = [], rng.uniform(0, 1.0 / p["rate"])
            while t < self.n / fs:  # each jump decays as an AC-coupled input recovers from it
                jumps.append((t * fs, rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5, k)))
                t += rng.exponential(1.0 / p["rate"])
            self.jumps = jumps
        elif kind == "respiration":
            self.phase = rng.uniform(0, 2 * np.pi)
        self.gain = np.ones(k)
        self.mean = np.zeros(k)
        if KINDS[kind].additive:
            self._calibrate(k, float(artifact.snr))

    def _calibrate(self, k: int, snr: float) -> None:
        """Each lead's gain for ``snr``: N over the whole interval (one-second RMS about each
        second's own mean, so the interval's mean does not enter it), a minute at a time."""
        step, rms, total = int(60 * self.fs), [], np.zeros(k)
        one = int(self.fs)
        for i0 in range(0, self.n, step):
            w = self.raw(i0, min(step, self.n - i0))
            total += w.sum(axis=0)
            for c in range(0, len(w) - one + 1 if len(w) >= one else 1, one):
                chunk = w[c:c + one]
                rms.append(np.sqrt(np.mean((chunk - chunk.mean(axis=0)) ** 2, axis=0)))
        self.mean = total / max(1, self.n)
        if not rms:
            return
        r = np.sort(np.stack(rms), axis=0)
        cut = int(len(r) * TRIM)
        noise = (r[cut:len(r) - cut] if len(r) > 2 * cut else r).mean(axis=0) ** 2
        self.gain = np.where(noise > 0, np.sqrt(self.s / (np.maximum(noise, 1e-30) * 10 ** (snr / 10.0))), 0.0)

    def raw(self, i0: int, n: int) -> np.ndarray:
        """The unscaled waveform (n, leads) at the artifact's samples ``i0``..``i0 + n``."""
        kind, p, fs = self.a.kind, self.params, self.fs
        k = len(self.s)
        i = np.arange(i0, i0 + n)
        if kind in NOISE_RECORDS:
            rec = self.record
            return rec[(self.offset + i) % len(rec)][:, np.arange(k) % rec.shape[1]].astype(np.float64)
        t = i / fs
        if kind == "powerline":
            wave = np.zeros(n)
            for h, ph in enumerate(self.phases, start=1):
                if h * p["hz"] < fs / 2:  # above Nyquist a harmonic would alias: a sampled monitor filters it out
                    wave += np.sin(2 * np.pi * h * p["hz"] * t + ph) / h ** 2
            return np.repeat(wave[:, None], k, axis=1)
        if kind == "emg":
            lo, taps = i0 - len(self.taps) + 1, self.taps
            blocks = range(lo // BLOCK, (i0 + n - 1) // BLOCK + 1) if n else range(0)
            white = np.concatenate([np.random.default_rng((self.seed, b & 0x7FFFFFFF)).standard_normal((BLOCK, k))
                                    for b in blocks]) if n else np.zeros((0, k))
            start = lo - (lo // BLOCK) * BLOCK
            white = white[start:start + n + len(taps) - 1]
            noise = np.stack([np.convolve(white[:, j], taps, mode="valid") for j in range(k)], axis=1)
            env = np.zeros(n)
            for a, b in self.bursts:
                if b > a and a < i0 + n and b > i0:
                    u = np.clip((i - a) / (b - a), 0.0, 1.0)
                    env = np.maximum(env, np.where((i >= a) & (i < b), np.sin(np.pi * u) ** 0.5, 0.0))
            return noise * env[:, None]
        if kind == "steps":
            wave = np.zeros((n, k))
            for at, jump in self.jumps:
                if at < i0 + n:
                    after = np.maximum(i - at, 0.0)
                    wave += np.where((i >= at)[:, None], jump * np.exp(-after / (p["recovery"] * fs))[:, None], 0.0)
            return wave
        if kind == "respiration":
            return np.repeat(np.sin(2 * np.pi * p["rate"] / 60.0 * t + self.phase)[:, None], k, axis=1)
        return np.zeros((n, k))

    def draw(self, x: np.ndarray, t0: float) -> np.ndarray:
        """``x`` (samples, leads), the window of the stream from time ``t0``, with the artifact
        drawn where it overlaps it (``x`` itself untouched)."""
        first = int(round((self.a.start - t0) * self.fs))
        lo, hi = max(0, first), min(len(x), first + self.n)
        if hi <= lo:
            return x
        out = np.array(x, np.float64 if x.dtype == np.float64 else np.float32, copy=True)
        cols = np.arange(x.shape[1]) if self.leads is None else self.leads
        seg = out[lo:hi][:, cols].astype(np.float64)
        kind, p = self.a.kind, self.params
        if kind == "lead_off":
            seg[:] = RAIL if p["level"] == "rail" else 0.0
        elif kind == "saturation":
            limit = p["limit"] * np.sqrt(8 * self.s)  # S = (QRS peak-to-peak)^2 / 8
            seg = np.clip(seg, -limit, limit)
        else:
            i0 = lo - first
            if kind == "respiration":  # the QRS amplitude breathes with the baseline
                t = np.arange(i0, i0 + hi - lo) / self.fs
                seg = seg * (1.0 + p["depth"] * np.sin(2 * np.pi * p["rate"] / 60.0 * t + self.phase))[:, None]
            seg = seg + (self.raw(i0, hi - lo) - self.mean) * self.gain
        out[lo:hi, cols] = seg
        return out


_SNR = {"snr": (-12.0, 36.0)}
KINDS: dict[str, Kind] = {
    **{k: Kind(True, {}, _SNR) for k in NOISE_RECORDS},
    "powerline": Kind(True, {"hz": 50.0, "harmonics": 3}, {**_SNR, "hz": (45.0, 65.0), "harmonics": (1, 5)}),
    "emg": Kind(True, {"duty": 0.5}, {**_SNR, "duty": (0.05, 1.0)}),
    "steps": Kind(True, {"rate": 0.5, "recovery": 0.8}, {**_SNR, "rate": (0.05, 5.0), "recovery": (0.05, 10.0)}),
    "respiration": Kind(True, {"rate": 15.0, "depth": 0.1}, {**_SNR, "rate": (4.0, 60.0), "depth": (0.0, 0.5)}),
    "lead_off": Kind(False, {"level": "flat"}, {}),
    "saturation": Kind(False, {"limit": 0.4}, {"limit": (0.05, 2.0)}),
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
    """``clean`` (samples, leads), a record from stream time 0, with ``artifacts`` drawn in order.

    Args:
        normal_beats: sample indices of the record's normal beats (S per lead, as ``nst``).
        seed: the record's seed; the i-th artifact's own seed comes from (seed, i).

    Returns:
        the signal, and per artifact its SNR measured back per lead (additive kinds; for
        respiration its amplitude modulation counts as noise too).

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
        before = x
        x = Drawn(a, fs, s, artifact_seed(seed, i), nstdb).draw(x, 0.0)
        lo, hi = int(round(a.start * fs)), min(len(x), int(round(a.end * fs)))
        leads = np.arange(x.shape[1]) if a.leads is None else np.asarray(a.leads)
        if KINDS[a.kind].additive and hi - lo >= fs:
            measured.append({int(j): round(10 * math.log10(s[j] / noise_power(x[lo:hi, j] - before[lo:hi, j], fs)), 2)
                             for j in leads})
        else:
            measured.append({})
    return x.astype(np.float32), measured


def artifact_seed(seed: int, index: int) -> int:
    """The seed of a stream's ``index``-th artifact."""
    return int(np.random.default_rng((seed & 0x7FFFFFFF, index)).integers(0, 2**31))
