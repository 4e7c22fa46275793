"""The patient's beats laid on the schedule: morphology from the twin, timing from the rhythm layer.

The diffusion model draws the patient's heart (``BeatBank.from_windows`` cuts its beats out of
the twin's own windows, in the patient's morphology at a rate it renders well); the renderer
places one of them at every scheduled R peak, time-warped for the RR (QT shortens about as
sqrt(RR), the PR little), and adds the atrial activity a rhythm has without beats of its own (AF's
f waves, flutter waves) and the episodes without QRS complexes (VF; asystole is flat). Every
sample is a function of absolute stream time, the beats around it and the stream's seed, so a
stream cut into windows anywhere gives the same samples: a beat across a seam is drawn once,
partly in each window.

Why not a timing input to the diffusion model: a tester needs every beat exactly where the
ground truth says and the rate within 1 bpm over 30-250 bpm; the PTB-XL training windows span
about 40-150 bpm, and a sampled window puts its beats only roughly where it is asked
(docs/EVALUATION.md: a third of 10 s windows more than 10 bpm off).
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import wfdb.processing as wp

from models.rhythm.beats import Beat, Episode

PRE_S, POST_S = 0.30, 0.50  # a beat's extent about its R peak, as cut (P onset to T end at 75 bpm)
QRS_BEFORE_S, QRS_AFTER_S = 0.06, 0.08  # kept as they are at every rate; the rest is warped
TAPER_S = 0.03
P_FADE_S = 0.04  # a beat drawn without its P wave fades in over this before its QRS
BANK_RATE = 75.0  # the model's rate error is smallest at 60-80 bpm (docs/EVALUATION.md: within 1.3)
# the longest a placed beat reaches about its R (at the slowest rates the warp stretches the T)
REACH_BEFORE_S, REACH_AFTER_S = 0.32, 0.70
LEAD_II = 1
# noise seeds a bank is tried with before a morphology is given up: of 3,111 banks of the 183
# held-out patients (own state, 8 morphologies guided and not), 11 failed the first, none the third
BANK_TRIES = 4
MIN_ALIKE = 6  # of a bank's ~12 beats; the shipped suite's sinus twins keep 9-12
# rhythms whose conducted beats show no P wave of their own (f or flutter waves instead, or
# none to see: in a regular tachycardia above 180 it is buried in the T wave)
NO_P_WAVES = frozenset({"afib", "aflutter", "svt", "vt", "paced"})
# a pacing pulse (IEC 60601-2-27: 2-700 mV, 0.1-2 ms) is far shorter than a 250 Hz sample: it is
# drawn as the footprint a band-limited monitor shows, a biphasic blip of PACE_SPIKE times the
# lead's QRS height at the stimulus, PACE_LEAD_S before the paced beat's R peak
PACE_SPIKE, PACE_LEAD_S = 0.5, 0.09


class BankError(ValueError):
    """The twin's windows gave too few clean beats to build a patient's beat bank from."""


@dataclass(frozen=True)
class BeatBank:
    """Beats of one patient's morphology (12 leads), each with its R peak at sample ``r``.

    Attributes:
        normal: (K, length, leads) beats cut from the twin's windows, baseline at zero at the ends.
        ventricular: (K, length, leads) wide-complex beats derived from them (see ``ventricular``).
        fs: sampling rate.
        rr: the RR (seconds) they were cut at.
        scale: (leads,) each lead's QRS peak-to-peak amplitude, for atrial and VF activity.
    """

    normal: np.ndarray
    ventricular: np.ndarray
    fs: int
    rr: float
    scale: np.ndarray

    @property
    def r(self) -> int:
        return int(round(PRE_S * self.fs))

    def t_wave_height(self, lead: int = LEAD_II) -> float:
        """The median normal beat's T wave in ``lead``: its largest deflection from the end of
        the QRS (R + ``QRS_AFTER_S`` + 40 ms) on, signed."""
        med = np.median(self.normal, axis=0)[:, lead]
        t = med[self.r + int(round((QRS_AFTER_S + 0.04) * self.fs)):]
        return float(t[int(np.argmax(np.abs(t)))]) if len(t) else 0.0

    def with_t_wave(self, height: float, lead: int = LEAD_II) -> BeatBank:
        """The bank with every normal beat's T wave (all leads alike) scaled so that the median's
        in ``lead`` is ``height`` (in the bank's units; its sign kept), faded in over the 40 ms
        after the QRS so the ST segment joins without a step. Ventricular beats keep theirs.

        Raises:
            BankError: a beat without a T wave to scale (flat in ``lead``).
        """
        now = self.t_wave_height(lead)
        if abs(now) < 1e-3 * max(1e-9, float(self.scale[lead])):
            raise BankError("the twin's T wave is flat in that lead: there is nothing to make taller")
        k = abs(height) / abs(now)
        n = self.normal.shape[1]
        u = (np.arange(n) - self.r) / self.fs
        w = np.clip((u - QRS_AFTER_S) / 0.04, 0.0, 1.0)[None, :, None]
        return replace(self, normal=(self.normal * (1.0 + (k - 1.0) * w)).astype(np.float32))

    @classmethod
    def from_windows(cls, windows: Sequence[np.ndarray], fs: int, max_beats: int = 12) -> BeatBank:
        """Cut the beats of ``windows`` ((samples, leads) each, one patient in one state).

        QRS complexes by XQRS on lead II (on the lead whose beats agree best where fewer than
        ``MIN_ALIKE`` of lead II's do); each beat then shifted onto the median beat (the
        best cross-correlation of all leads' QRS within 40 ms), and the R peak set on the
        median's largest lead-II deflection: every beat has its R at the same sample. Beats
        unlike the median (a misplaced detection, a merged pair) are dropped.

        Raises:
            BankError: fewer than two clean beats.
        """
        windows = [np.asarray(w, np.float32) for w in windows]
        # few beats alike: XQRS misread lead II (a bundle-branch block's wide QS made it mark P
        # and T waves, one CLBBB twin's RRs 330-950 ms at 75 bpm), so the median it aligned to
        # was no beat; then the lead whose beats agree best gives the bank
        best: tuple[BeatBank, int] | None = None
        first_error: BankError | None = None
        for lead in [LEAD_II] + [k for k in range(windows[0].shape[1]) if k != LEAD_II]:
            try:
                bank, alike = cls._cut(windows, fs, max_beats, lead)
            except BankError as exc:
                first_error = first_error or exc
                continue
            if best is None or alike > best[1]:
                best = bank, alike
            if best[1] >= MIN_ALIKE:
                break
        if best is None:
            raise first_error
        return best[0]

    @classmethod
    def _cut(cls, windows: Sequence[np.ndarray], fs: int, max_beats: int, lead: int) -> tuple[BeatBank, int]:
        """The bank from XQRS's beats on ``lead`` (R peaks still set on lead II), and how many
        beats were alike."""
        pre, post = int(round(PRE_S * fs)), int(round(POST_S * fs))
        slack = int(0.08 * fs)  # room to shift each beat by before it is cut to its extent
        spans, rrs = [], []
        for w in windows:
            peaks = np.asarray(wp.xqrs_detect(w[:, lead].astype(np.float64), fs=fs, verbose=False), int)
            rrs += list(np.diff(peaks) / fs)
            spans += [w[p - pre - slack:p + post + slack] for p in peaks
                      if p - pre - slack >= 0 and p + post + slack <= len(w)]
        if len(spans) < 2:
            raise BankError(f"the twin's windows gave {len(spans)} whole beats; need at least 2")
        raw = np.stack(spans)
        shifts = np.zeros(len(raw), int)
        qrs = slice(slack + pre - int(QRS_BEFORE_S * fs), slack + pre + int(QRS_AFTER_S * fs))
        for _ in range(2):  # align on the median, re-take the median, align again
            med = np.median([np.roll(b, -s, axis=0) for b, s in zip(raw, shifts, strict=True)], axis=0)[qrs]
            shifts = np.array([_best_shift(b, med, qrs, int(0.04 * fs)) for b in raw])
        aligned = np.stack([np.roll(b, -s, axis=0) for b, s in zip(raw, shifts, strict=True)])
        med = np.median(aligned, axis=0)
        around = slice(slack + pre - int(0.06 * fs), slack + pre + int(0.06 * fs) + 1)
        lead = med[around, LEAD_II] - np.median(med[:, LEAD_II])
        r = around.start + int(np.argmax(np.abs(lead)))  # the median's R peak, in the spans
        beats = np.stack([_flatten_ends(b[r - pre:r + post], int(TAPER_S * fs)) for b in aligned])
        med = np.median(beats, axis=0)
        corr = np.array([np.corrcoef(b.ravel(), med.ravel())[0, 1] for b in beats])
        # and a lead-II QRS like the median's: the detectors' lead (one beat at half the
        # height made every detector miss 12% of one patient's AF beats)
        cut_qrs = slice(pre - int(QRS_BEFORE_S * fs), pre + int(QRS_AFTER_S * fs))
        height = np.ptp(beats[:, cut_qrs, LEAD_II], axis=1) / max(1e-6, float(np.ptp(med[cut_qrs, LEAD_II])))
        alike = (corr >= max(0.85, float(np.median(corr)) - 0.1)) & (height >= 0.75) & (height <= 1.33)
        keep = beats[alike][:max_beats]
        if len(keep) < 2:
            raise BankError("the twin's beats disagree with each other (fewer than 2 alike)")
        # each lead of each beat at the median's QRS height: the model's beat-to-beat amplitude
        # swings (one CLBBB twin's lead-II QRS 2.1-3.2) made detectors take small beats for T waves
        target = np.ptp(np.median(keep, axis=0)[cut_qrs], axis=0)
        gain = np.clip(target / np.maximum(np.ptp(keep[:, cut_qrs], axis=1), 1e-6), 0.67, 1.5)
        keep = keep * gain[:, None, :]
        rr = float(np.median(rrs)) if rrs else 60.0 / BANK_RATE
        scale = np.ptp(np.median(keep, axis=0)[cut_qrs], axis=0)
        return cls(keep.astype(np.float32), np.stack([ventricular(b, fs) for b in keep]), fs, rr,
                   np.maximum(scale, 1e-3).astype(np.float32)), int(alike.sum())


def _best_shift(beat: np.ndarray, template: np.ndarray, qrs: slice, radius: int) -> int:
    """The shift (samples) of ``beat`` whose QRS best matches ``template`` (all leads)."""
    scores = [float((beat[qrs.start + s:qrs.stop + s] * template).sum()) for s in range(-radius, radius + 1)]
    return int(np.argmax(scores)) - radius


def _interpolate(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``rows`` (samples, leads) read at fractional sample positions ``at``, linearly (held at
    the ends outside them)."""
    i0 = np.clip(np.floor(at).astype(int), 0, len(rows) - 2)
    f = np.clip(at - i0, 0.0, 1.0)[:, None]
    return rows[i0] * (1 - f) + rows[i0 + 1] * f


def _flatten_ends(beat: np.ndarray, taper: int) -> np.ndarray:
    """The beat less the line through its end levels, faded to zero over ``taper`` samples at
    each end, so that beats overlapping at fast rates add up without steps."""
    n = len(beat)
    a, b = beat[:taper].mean(axis=0), beat[-taper:].mean(axis=0)
    line = a + (b - a) * np.linspace(0.0, 1.0, n)[:, None]
    fade = np.ones(n, np.float32)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, taper))
    fade[:taper], fade[-taper:] = ramp, ramp[::-1]
    return ((beat - line) * fade[:, None]).astype(np.float32)


def qrs_width(beat: np.ndarray, fs: int) -> float:
    """A beat's QRS duration (s): where the slope summed over leads exceeds a fifth of its peak,
    within 100 ms of the R peak."""
    r = int(round(PRE_S * fs))
    lo, hi = r - int(0.1 * fs), r + int(0.1 * fs)
    slope = np.abs(np.diff(beat[lo:hi], axis=0)).sum(axis=1)
    above = np.flatnonzero(slope >= 0.2 * slope.max())
    return float((above[-1] - above[0] + 1) / fs) if len(above) else 0.08


def ventricular(beat: np.ndarray, fs: int, width_s: float = 0.16) -> np.ndarray:
    """A wide-complex (ventricular) beat derived from a normal one: no P wave, the QRS stretched
    to about ``width_s`` (by 1.2-2 times its own width: a bundle-branch block's is already wide;
    a narrow one stretched more became a smooth hump XQRS missed), and a T wave opposite the QRS's main deflection in each lead (secondary ST-T change).
    Not learned: the PTB-XL model renders PVCs too weakly (docs/EVALUATION.md, judge AUROC 0.72)
    to cut them from its windows."""
    r, n = int(round(PRE_S * fs)), len(beat)
    own = qrs_width(beat, fs)
    k = float(np.clip(width_s / own, 1.2, 2.0))
    half = int(round(max(0.05, own / 2 + 0.01) * fs))
    qrs = beat[r - half:r + half + 1]
    t = (np.arange(n) - r) / fs
    src = t * fs / k + half  # index into the QRS for each output sample
    inside = (src >= 0) & (src <= 2 * half)
    stretched = _interpolate(qrs, src)
    # flat over the middle 70%, faded at the ends: the lobes keep their height and slope
    edge = np.clip((1.0 - np.abs(src - half) / half) / 0.3, 0.0, 1.0)
    window = np.where(inside, 0.5 - 0.5 * np.cos(np.pi * edge), 0.0)
    out = 1.3 * stretched * window[:, None]
    main = qrs[np.argmax(np.abs(qrs), axis=0), np.arange(beat.shape[1])]
    twave = np.exp(-0.5 * ((t - (0.14 + k * own)) / 0.06) ** 2)  # after the wide QRS
    out += (-0.35 * main)[None, :] * twave[:, None]
    return _flatten_ends(out.astype(np.float32), int(TAPER_S * fs))


def _warp(tau: np.ndarray, rr: float, bank_rr: float, with_p: bool) -> tuple[np.ndarray, np.ndarray]:
    """Template time for each output time ``tau`` (seconds from R) at RR ``rr``, and the weight
    the beat is drawn with there (0 outside it; without a P wave, 0 before the QRS). After the QRS time runs sqrt(RR) fast (Bazett), limited so that the
    T wave ends before the next QRS at fast rates; the P wave and PR shorten less."""
    k = min(math.sqrt(rr / bank_rr), max(0.25, (0.85 * rr - QRS_AFTER_S) / (POST_S - QRS_AFTER_S)),
            (REACH_AFTER_S - QRS_AFTER_S) / (POST_S - QRS_AFTER_S))
    kp = max(0.55, min(1.0, math.sqrt(rr / bank_rr)))
    u = np.where(tau > QRS_AFTER_S, QRS_AFTER_S + (tau - QRS_AFTER_S) / k,
                 np.where(tau < -QRS_BEFORE_S, -QRS_BEFORE_S + (tau + QRS_BEFORE_S) / kp, tau))
    weight = ((u >= -PRE_S) & (u <= POST_S)).astype(np.float64)
    if not with_p:  # faded in over the 40 ms before the QRS: a hard cut there made a step
        weight *= np.clip((u + QRS_BEFORE_S + P_FADE_S) / P_FADE_S, 0.0, 1.0)
    return u, weight


def _stream_rng(seed: int, t: float) -> np.random.Generator:
    return np.random.default_rng((seed & 0x7FFFFFFF, int(round(t * 1e6)) & 0x7FFFFFFFFFFF))


class BeatRenderer:
    """Samples of one stream from its beats and episodes.

    Args:
        bank: the patient's beats.
        seed: the stream's seed (which bank beat each beat shows, the f-wave phases).
        pace_footprint: draw each pacing stimulus as its band-limited footprint (a stream at the
            model's rate); False where the pulse itself is drawn at a higher output rate
            (``models.rhythm.pacing``).
    """

    def __init__(self, bank: BeatBank, seed: int, pace_footprint: bool = True) -> None:
        self.fs, self.seed, self.pace_footprint = bank.fs, seed & 0x7FFFFFFF, pace_footprint
        self._banks: list[tuple[float, BeatBank]] = [(-math.inf, bank)]
        self.leads = bank.normal.shape[2]
        phase = np.random.default_rng(self.seed)
        self._f_hz = 5.5 + 1.5 * phase.random(3)  # AF's f waves: 4-9 Hz in the literature
        self._f_phase = 2 * np.pi * phase.random((3, self.leads))
        self._vf_phase = 2 * np.pi * phase.random((3, self.leads))

    def morph(self, since: float, bank: BeatBank) -> None:
        """Beats from stream time ``since`` on are drawn from ``bank`` (a new morphology); the
        beats before it keep theirs, also where their waves reach past ``since``."""
        if bank.fs != self.fs or bank.normal.shape[2] != self.leads:
            raise ValueError("a new bank must have the stream's rate and leads")
        self._banks = [(t, b) for t, b in self._banks if t < since] + [(since, bank)]

    def copy(self) -> BeatRenderer:
        """A renderer whose later ``morph`` calls leave this one's alone (the banks are shared)."""
        twin = copy.copy(self)
        twin._banks = list(self._banks)
        return twin

    def bank_at(self, t: float) -> BeatBank:
        """The bank of beats at stream time ``t``."""
        return next(b for since, b in reversed(self._banks) if since <= t)

    def render(self, t0: float, n: int, beats: Sequence[Beat], episodes: Sequence[Episode]) -> np.ndarray:
        """(n, leads) samples from stream time ``t0``.

        Args:
            beats: in time order, every beat within ``REACH_AFTER_S`` before the window to
                ``REACH_BEFORE_S`` after it, and the one before those (each beat is warped for
                the RR before it).
            episodes: the rhythm episodes overlapping the window.
        """
        fs = self.fs
        out = np.zeros((n, self.leads), np.float32)
        times = t0 + np.arange(n) / fs
        no_p = [(e.start, math.inf if e.end is None else e.end) for e in episodes if e.rhythm in NO_P_WAVES]
        for i, b in enumerate(beats):
            if b.time + REACH_AFTER_S < t0 or b.time - REACH_BEFORE_S > times[-1]:
                continue
            # the stream's first beat is drawn at the bank's own RR (what follows it may not be
            # known yet: the same sample values however the stream is cut)
            rr = b.time - beats[i - 1].time if i > 0 else self.bank_at(b.time).rr
            # a ventricular (or paced) template has no P wave and its wide QRS begins early: drawn whole
            atrial = b.kind in ("N", "S", "Q", "V", "P") and not (
                b.kind in ("N", "S", "Q") and any(lo <= b.time < hi for lo, hi in no_p))
            self._add_beat(out, t0, b, rr, atrial)
        for e in episodes:
            self._add_episode(out, times, e)
        return out

    def _add_beat(self, out: np.ndarray, t0: float, b: Beat, rr: float, with_p: bool) -> None:
        fs, bank = self.fs, self.bank_at(b.time)
        lo = max(0, math.ceil((b.time - REACH_BEFORE_S - t0) * fs))
        hi = min(len(out), math.floor((b.time + REACH_AFTER_S - t0) * fs) + 1)
        if hi <= lo:
            return
        tau = t0 + np.arange(lo, hi) / fs - b.time
        rr = max(0.2, min(rr, 2.5))
        u, drawn = _warp(tau, rr, bank.rr, with_p)
        rng = _stream_rng(self.seed, b.time)
        k = int(rng.integers(len(bank.normal)))
        if b.kind in ("V", "P"):
            tpl = bank.ventricular[k]
        elif b.kind == "F":
            tpl = 0.5 * (bank.normal[k] + bank.ventricular[k])
        else:
            tpl = bank.normal[k]
        wave = _interpolate(tpl, u * fs + bank.r)
        gain = 1.0 + 0.04 * rng.standard_normal()  # beat-to-beat amplitude (respiration, position)
        out[lo:hi] += (gain * wave * drawn[:, None]).astype(np.float32)
        if b.kind == "P" and self.pace_footprint:  # the stimulus: its sample and the next (the amplifier's recovery)
            at = int(round((b.time - PACE_LEAD_S) * fs)) - int(round(t0 * fs))
            for i, h in ((at, 1.0), (at + 1, -0.3)):
                if 0 <= i < len(out):
                    out[i] += (PACE_SPIKE * h * bank.scale).astype(np.float32)

    def _add_episode(self, out: np.ndarray, times: np.ndarray, e: Episode) -> None:
        end = math.inf if e.end is None else e.end
        inside = (times >= e.start) & (times < end)
        if not inside.any() or e.rhythm not in ("afib", "aflutter", "vf"):
            return
        t = times[inside]
        # faded in and out over 0.3 s, so that the transitions stay continuous
        fade = np.clip(np.minimum(t - e.start, end - t) / 0.3, 0.0, 1.0)[:, None]
        scale = self.bank_at(float(t[0])).scale[None, :]
        if e.rhythm == "afib":  # f waves: three drifting sinusoids, about 8% of the QRS
            w = sum(np.sin(2 * np.pi * self._f_hz[j] * t[:, None] + self._f_phase[j]) for j in range(3)) / 3
            w = 0.08 * scale * w * (1 + 0.3 * np.sin(2 * np.pi * 0.2 * t))[:, None]
        elif e.rhythm == "aflutter":  # flutter waves: a sawtooth at 300/min, negative in II, III, aVF
            saw = 2.0 * ((5.0 * t) % 1.0) - 1.0
            sign = np.ones(self.leads, np.float32)
            sign[[1, 2, 5]] = -1.0
            w = 0.12 * scale * sign * saw[:, None]
        else:  # ventricular fibrillation: 4-7 Hz, waxing and waning, about 40% of the QRS
            f = np.array([4.3, 5.1, 6.2])
            env = 0.6 + 0.4 * np.sin(2 * np.pi * 0.35 * t)[:, None]
            w = sum(np.sin(2 * np.pi * f[j] * t[:, None] + self._vf_phase[j]) for j in range(3)) / 2
            w = 0.4 * scale * env * w
        out[inside] += (fade * w).astype(np.float32)


def bank_seed(patient_id: str) -> int:
    """A stream's renderer seed from its patient id."""
    return zlib.crc32(patient_id.encode()) & 0x7FFFFFFF


def bank_seeds(seed: int) -> list[int]:
    """The noise seeds a bank is drawn with until one gives beats to cut: ``seed`` first (the
    bank as it always was), then others well apart from a bank's consecutive window seeds."""
    return [seed + 7919 * k for k in range(BANK_TRIES)]


def no_bank(first: BankError) -> BankError:
    """The error once every seed of ``bank_seeds`` failed: the first try's reason."""
    return BankError(f"{first} (with each of {BANK_TRIES} noise seeds)")
