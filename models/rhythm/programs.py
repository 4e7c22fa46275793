"""Rhythm programs: each a small plain function with one signature,

    program(rhythm, since, last, recent, rng) -> Beat | None

the next beat after stream time ``since`` (the last beat, or the moment the rhythm began if that
is later), given the last beat, the classes of the beats before it (newest last) and a random
generator seeded for this beat; None for a rhythm without beats (asystole, ventricular
fibrillation). ``RHYTHMS`` is the one registry of names, with each program's parameter limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from models.rhythm.beats import Beat


class RhythmError(ValueError):
    """A rhythm that cannot be made: unknown name or parameter, or a value out of its range."""


@dataclass(frozen=True)
class Rhythm:
    """A rhythm asked for. Unset parameters take the program's defaults (``validated``).

    Attributes:
        name: a key of ``RHYTHMS``.
        rate: ventricular rate in bpm (for ectopy patterns: the underlying sinus rate).
        duration: seconds the episode lasts before the rhythm before it resumes (a VT run,
            asystole); for ``pause``, the RR interval the pause makes. None: until changed.
        pattern: ``pvc``: isolated, couplet, bigeminy or trigeminy.
        probability: isolated ectopy and couplets: the chance per sinus beat.
        coupling: ectopic coupling interval as a fraction of the sinus RR.
        ratio: atrial flutter's conduction (2, 3 or 4 flutter waves per beat; 0 varies).
        irregularity: AF's RR spread, the coefficient of variation the program aims at
            (MIT-BIH's AF: median 0.18 over 1 min; CPSC 2021's: 0.24; docs/RHYTHM.md).
        pulse_mv, pulse_ms: ``paced``: the pacing pulse's amplitude and width, over IEC
            60601-2-27's test ranges (2-700 mV, 0.1-2 ms); drawn where the output rate can carry
            it (``twin-engine render --fs``), at 250 Hz as its band-limited footprint.
            ``asystole`` with a ``rate``: a pacemaker firing at that rate without capture (pulses,
            no QRS: the pacer-rejection test), drawn at such an output rate only.
    """

    name: str = "sinus"
    rate: float | None = None
    duration: float | None = None
    pattern: str | None = None
    probability: float | None = None
    coupling: float | None = None
    ratio: int | None = None
    irregularity: float | None = None
    pulse_mv: float | None = None
    pulse_ms: float | None = None

    @staticmethod
    def from_dict(d: dict) -> Rhythm:
        """From a request (event, HTTP, scenario); RhythmError names what is wrong."""
        if not isinstance(d, dict):
            raise RhythmError("a rhythm is an object with a name and its parameters")
        known = {f.name for f in fields(Rhythm)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RhythmError(f"unknown rhythm parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return Rhythm(**d).validated()

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def validated(self) -> Rhythm:
        """With the program's defaults filled in, every value checked against its limits."""
        spec = RHYTHMS.get(self.name)
        if spec is None:
            raise RhythmError(f"unknown rhythm {self.name!r}; known: {', '.join(rhythm_names())}")
        r = replace(self, **{k: v for k, v in spec.defaults.items() if getattr(self, k) is None})
        for k in ("rate", "duration", "pattern", "probability", "coupling", "ratio", "irregularity", "pulse_mv",
                  "pulse_ms"):
            v = getattr(r, k)
            if v is None:
                continue
            if k not in spec.limits:
                raise RhythmError(f"rhythm {self.name!r} takes no {k}")
            lim = spec.limits[k]
            if isinstance(lim, tuple) and isinstance(lim[0], str):
                if v not in lim:
                    raise RhythmError(f"{self.name} {k} must be one of {', '.join(lim)}, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not lim[0] <= v <= lim[1]:
                raise RhythmError(f"{self.name} {k} must be {lim[0]:g}-{lim[1]:g}, got {v!r}")
        if r.name == "aflutter" and r.ratio and not 240 <= r.rate * r.ratio <= 350:
            raise RhythmError(f"atrial flutter at {r.rate:g} bpm with {r.ratio}:1 conduction would need atrial "
                              f"waves at {r.rate * r.ratio:g}/min; flutter runs at 240-350")
        return r

    @property
    def rr(self) -> float:
        """The mean RR interval in seconds."""
        return 60.0 / float(self.rate)


Program = Callable[[Rhythm, float, Beat | None, Sequence[str], np.random.Generator], Beat | None]

# sinus variability as ECGSYN models it (McSharry et al. 2003: Mayer waves at 0.1 Hz, respiration
# at 0.25 Hz) plus jitter of each beat about the sinus node's time; sized to MIT-BIH's sinus
# (SDNN and RMSSD over 5 min, docs/RHYTHM.md) and scaled down above 60 bpm (vagal tone
# withdrawn). Jitter about the node's time, not in the RR, keeps a 10 s mean rate within 1 bpm.
LF_HZ, HF_HZ, LF, HF, JITTER_S = 0.1, 0.25, 0.04, 0.03, 0.013
REFRACTORY_S = 0.24  # no beat follows another sooner (AF's shortest RRs in mitdb are about 0.25 s)


def _sinus_beat(r: Rhythm, since: float, last: Beat | None, rng: np.random.Generator) -> Beat:
    scale = min(1.0, r.rr)
    base = last.anchor if last is not None and last.anchor is not None and last.kind == "N" else since
    mod = LF * math.sin(2 * math.pi * LF_HZ * base) + HF * math.sin(2 * math.pi * HF_HZ * base)
    anchor = base + r.rr * (1.0 - scale * mod)
    t = max(anchor + scale * JITTER_S * rng.standard_normal(), since + 0.5 * r.rr)
    return Beat(t, "N", anchor)


def sinus(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Sinus rhythm (also bradycardia and tachycardia) with heart-rate variability."""
    return _sinus_beat(r, since, last, rng)


def afib(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Atrial fibrillation: irregularly irregular RR, log-normal about the mean (CV about ``irregularity``)."""
    sigma = float(r.irregularity)  # log-normal: a CV of about sigma at these sizes
    rr = r.rr * math.exp(sigma * rng.standard_normal() - sigma * sigma / 2)
    return Beat(since + max(REFRACTORY_S, rr), "N")


def aflutter(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Atrial flutter: beats every ``ratio`` flutter waves (0: 2, 3 or 4 at random, variable block)."""
    ratio = r.ratio or int(rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2]))
    flutter = r.rr / (r.ratio or 2)  # the flutter wave's cycle; ``rate`` is the 2:1 (or stated) ventricular rate
    return Beat(since + ratio * flutter * (1.0 + 0.005 * rng.standard_normal()), "N")


def _trailing(recent: Sequence[str], kind: str) -> int:
    """How many of the last beats in a row are of ``kind``."""
    n = 0
    for k in reversed(recent):
        if k != kind:
            break
        n += 1
    return n


def _ectopic(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator,
             kind: str, compensatory: bool) -> Beat:
    """Sinus with ectopic beats at ``coupling`` x RR. After a ventricular one the next sinus beat
    comes at two sinus RRs from the beat before it (a full compensatory pause); after an atrial
    one the sinus node is reset (one RR from the ectopic beat)."""
    prev = recent[-1] if recent else "N"
    if prev == kind:
        if r.pattern == "couplet" and (len(recent) < 2 or recent[-2] != kind):
            return Beat(since + r.coupling * r.rr, kind)
        if compensatory:
            # the sinus node went on undisturbed: its next beat is on its own grid from the last
            # sinus beat, the first at least half an RR after the ectopic one
            elapsed = _trailing(recent, kind) * r.coupling * r.rr
            return Beat(since + math.ceil((elapsed + 0.5 * r.rr) / r.rr) * r.rr - elapsed, "N")
        return _sinus_beat(r, since, None, rng)
    pattern = r.pattern or "isolated"
    normals = _trailing(recent, "N")
    if pattern == "bigeminy":
        ectopic = normals >= 1
    elif pattern == "trigeminy":
        ectopic = normals >= 2
    else:
        ectopic = normals >= 1 and rng.random() < r.probability
    return Beat(since + r.coupling * r.rr, kind) if ectopic else _sinus_beat(r, since, last, rng)


def pvc(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Sinus with premature ventricular beats: isolated, couplets, bigeminy or trigeminy."""
    return _ectopic(r, since, last, recent, rng, "V", compensatory=True)


def pac(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Sinus with premature atrial beats (non-compensatory: the sinus node is reset)."""
    return _ectopic(r, since, last, recent, rng, "S", compensatory=False)


def vt(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Monomorphic ventricular tachycardia: regular ventricular beats (2% jitter)."""
    return Beat(since + r.rr * (1.0 + 0.02 * rng.standard_normal()), "V")


def paced(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """Ventricular pacing (VVI) at a fixed rate: every beat paced, exactly on time."""
    return Beat(since + r.rr, "P")


def svt(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """A regular narrow-complex tachycardia (re-entrant: next to no rate variability)."""
    return Beat(since + r.rr * (1.0 + 0.003 * rng.standard_normal()), "N")


def pause(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> Beat:
    """A sinus pause: one RR interval of ``duration`` seconds, then the rhythm before it goes on."""
    return Beat(since + float(r.duration), "N")


def no_beats(r: Rhythm, since: float, last: Beat | None, recent: Sequence[str], rng: np.random.Generator) -> None:
    """Asystole, ventricular flutter/fibrillation: an episode without QRS complexes to count."""
    return None


@dataclass(frozen=True)
class Spec:
    """A program, its parameters' defaults and limits, and whether it makes one beat and ends."""

    program: Program
    defaults: dict
    limits: dict
    one_beat: bool = False


_SINUS_LIMITS = {"rate": (30.0, 180.0), "duration": (1.0, 86400.0)}
_ECTOPY = {"rate": (40.0, 150.0), "duration": (1.0, 86400.0), "coupling": (0.35, 0.9),
           "probability": (0.0, 0.5)}
RHYTHMS: dict[str, Spec] = {
    "sinus": Spec(sinus, {"rate": 70.0}, _SINUS_LIMITS),
    "sinus_brady": Spec(sinus, {"rate": 45.0}, {**_SINUS_LIMITS, "rate": (30.0, 59.0)}),
    "sinus_tachy": Spec(sinus, {"rate": 120.0}, {**_SINUS_LIMITS, "rate": (101.0, 180.0)}),
    "afib": Spec(afib, {"rate": 110.0, "irregularity": 0.2}, {"rate": (40.0, 200.0), "duration": (1.0, 86400.0),
                                                              "irregularity": (0.05, 0.4)}),
    "aflutter": Spec(aflutter, {"rate": 150.0, "ratio": 2}, {"rate": (60.0, 175.0), "ratio": (0, 4),
                                                             "duration": (1.0, 86400.0)}),
    "pvc": Spec(pvc, {"rate": 75.0, "pattern": "isolated", "probability": 0.1, "coupling": 0.7},
                {**_ECTOPY, "pattern": ("isolated", "couplet", "bigeminy", "trigeminy")}),
    "pac": Spec(pac, {"rate": 75.0, "probability": 0.1, "coupling": 0.7}, _ECTOPY),
    "paced": Spec(paced, {"rate": 70.0, "pulse_mv": 5.0, "pulse_ms": 0.5},
                  {"rate": (30.0, 180.0), "duration": (1.0, 86400.0), "pulse_mv": (2.0, 700.0), "pulse_ms": (0.1, 2.0)}),
    "svt": Spec(svt, {"rate": 200.0}, {"rate": (150.0, 250.0), "duration": (1.0, 86400.0)}),
    "vt": Spec(vt, {"rate": 180.0}, {"rate": (100.0, 250.0), "duration": (1.0, 86400.0)}),
    "pause": Spec(pause, {"duration": 3.0}, {"duration": (1.5, 12.0)}, one_beat=True),
    "asystole": Spec(no_beats, {}, {"duration": (1.0, 3600.0), "rate": (30.0, 180.0), "pulse_mv": (2.0, 700.0),
                                    "pulse_ms": (0.1, 2.0)}),
    "vf": Spec(no_beats, {}, {"duration": (1.0, 3600.0)}),
}


def rhythm_names() -> list[str]:
    return sorted(RHYTHMS)
