"""Pacing pulses at an output rate that can carry them (IEC 60601-2-27: 2-700 mV, 0.1-2 ms).

At the model's 250 Hz a 0.5 ms pulse is a fraction of one sample, so a stream draws each stimulus
as its band-limited footprint (``models.rhythm.render``). A record made for pacer-pulse tests
(``twin-engine render --fs``, or ``fs`` in a scenario) is drawn at the model's rate, resampled to
the output rate (band-limited: the ECG lies below 40 Hz) and given each paced beat's stimulus as a
rectangular pulse of the rhythm's ``pulse_mv`` and ``pulse_ms``, on every lead, its leading edge
``PACE_LEAD_S`` before the beat's R peak; an ``asystole`` asked with a pacing ``rate`` gets pulses at
that rate that capture nothing (IEC's pacer-rejection test: a meter that counts them misses the
asystole). The stimuli are listed in an annotation file of their own (``pace``), so ``bxb`` on
the beats file is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from models.rhythm.beats import Beat, Episode
from models.rhythm.render import PACE_LEAD_S

MAX_FS = 32_000  # 0.1 ms is 3 samples here; past it a record of minutes is GBs
PACE_SYMBOL = "^"  # WFDB's one pacer-spike code (PACESP)


def resample(x: np.ndarray, fs: int, fs_out: int) -> np.ndarray:
    """``x`` (samples, leads) from ``fs`` to ``fs_out`` (polyphase, band-limited)."""
    if fs_out == fs:
        return x
    r = Fraction(fs_out, fs)
    return resample_poly(x, r.numerator, r.denominator, axis=0).astype(np.float32)


DEFAULT_PULSE = (5.0, 0.5)  # mV, ms: the paced rhythm's defaults


def stimuli(beats: Sequence[Beat], requests: Sequence[dict], episodes: Sequence[Episode],
            end: float) -> list[tuple[float, float, float]]:
    """(time, mV, ms) of every pacing stimulus of a record ``end`` seconds long, in time order.

    Args:
        beats: the record's beats; each paced one ("P") has its stimulus before it, with the
            pulse of the last ``paced`` request at or before it.
        requests: the rhythms asked for (``Rhythm.to_dict`` with ``at``, their time), in order.
        episodes: the record's rhythm episodes; an asystole begun by a request with a ``rate``
            gets non-capturing stimuli at that rate from its start to its end.
    """
    out = []
    paced = [r for r in requests if r["name"] == "paced"]
    for b in beats:
        if b.kind != "P":
            continue
        held = [r for r in paced if r["at"] <= b.time]
        r = held[-1] if held else {}
        out.append((b.time - PACE_LEAD_S, r.get("pulse_mv") or DEFAULT_PULSE[0], r.get("pulse_ms") or DEFAULT_PULSE[1]))
    for e in episodes:
        asked = [r for r in requests if r["name"] == "asystole" and r.get("rate") and abs(r["at"] - e.start) < 1e-9]
        if e.rhythm != "asystole" or not asked:
            continue
        r = asked[-1]
        stop = min(end, e.end if e.end is not None else end)
        t = e.start + 60.0 / r["rate"] / 2  # the first half a pacing interval in: no beat just before
        while t < stop:
            out.append((t, r.get("pulse_mv") or DEFAULT_PULSE[0], r.get("pulse_ms") or DEFAULT_PULSE[1]))
            t += 60.0 / r["rate"]
    return sorted(out)


def add_pulses(x: np.ndarray, fs: int, pulses: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """``x`` (mV, samples x leads at ``fs``) with a rectangular pulse at each (time, mV, ms):
    ``round(ms * fs / 1000)`` samples, at least one, from the pulse's time on."""
    x = np.array(x, np.float32, copy=True)
    for t, mv, ms in pulses:
        a = int(round(t * fs))
        b = a + max(1, int(round(ms * fs / 1000)))
        if b > 0 and a < len(x):
            x[max(0, a):min(len(x), b)] += np.float32(mv)
    return x


def stream_problem(rhythm) -> str | None:
    """Why a stream at the model's rate cannot draw ``rhythm`` (a ``Rhythm``), or None."""
    if rhythm is not None and rhythm.name == "asystole" and rhythm.rate is not None:
        return ("asystole with a pacing rate (pulses without capture) is drawn only in records at a "
                "pacer-test rate (twin-engine render --fs); a stream at the model's rate cannot carry the pulses")
    return None
