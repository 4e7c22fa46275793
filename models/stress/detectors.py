"""QRS detectors, beat classifiers and alarm (arrhythmia) algorithms as plug-ins: a Python
callable, or an external command that reads a WFDB record and writes an annotation file. A
callable returns sample indices, or, to classify, ``(samples, symbols)`` (MIT-BIH beat symbols),
or, to report rhythms too, ``{"beats": samples, "symbols": [...], "rhythms": [(name, start_s,
end_s), ...]}`` with names of ``RHYTHM_ALARMS``; a command's annotation file carries its symbols,
and its rhythm changes (``+`` with MIT-BIH's aux notes: ``(AFIB``, ``(VT``, ``(VFL``, ``(ASYS``,
``(N`` ...) as an arrhythmia analyser writes them for ``epicmp``. A plug-in that reports rhythms
raises those alarms itself; for the others the suite derives them from its beats. Whatever a
detector returns is checked before it is scored: a malformed answer is a ``DetectorError`` with
the reason, never a crash of the run.

Built in as references: ``xqrs`` (``wfdb.processing.xqrs_detect``), ``neurokit2`` and
``pantompkins`` (``neurokit2.ecg_peaks`` with its default and Pan-Tompkins methods).
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from models.rhythm.annotations import rhythm_spans
from models.rhythm.beats import BEAT_SYMBOLS, MIT_KIND


class DetectorError(RuntimeError):
    """A detector failed or answered something that is not a list of beat positions."""


# the alarms a plug-in may report as rhythms, and the aux notes that name them in a WFDB file
RHYTHM_ALARMS = {"asystole": ("(ASYS",), "vt": ("(VT",), "vf": ("(VFL", "(VF"), "afib": ("(AFIB",)}
_AUX_ALARM = {aux: name for name, auxes in RHYTHM_ALARMS.items() for aux in auxes}


@dataclass(frozen=True)
class Analysis:
    """What a plug-in found in one record: beats (sample indices), their classes (a classifier),
    and the rhythm alarms' intervals in seconds (a plug-in that reports rhythms; None: it does not)."""

    samples: np.ndarray
    kinds: list[str] | None = None
    rhythms: dict[str, list[tuple[float, float]]] | None = None


def checked_rhythms(rhythms: object, seconds: float, name: str) -> dict[str, list[tuple[float, float]]]:
    """``[(alarm, start_s, end_s), ...]`` as intervals per alarm of ``RHYTHM_ALARMS``, or
    DetectorError saying why not."""
    if not isinstance(rhythms, (list, tuple)):
        raise DetectorError(f"{name}: rhythms must be a list of (name, start_s, end_s)")
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in RHYTHM_ALARMS}
    for r in rhythms:
        if not (isinstance(r, (list, tuple)) and len(r) == 3):
            raise DetectorError(f"{name}: each rhythm is (name, start_s, end_s), got {r!r}"[:200])
        kind, a, b = r
        if kind not in RHYTHM_ALARMS:
            raise DetectorError(f"{name}: rhythm {kind!r} is not one of {', '.join(RHYTHM_ALARMS)}"[:200])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (a, b)) \
                or not 0 <= a < b <= seconds + 1e-6:
            raise DetectorError(f"{name}: a rhythm's start and end must lie in 0..{seconds:g} s, start before end")
        out[kind].append((float(a), float(b)))
    return {k: sorted(v) for k, v in out.items()}


def rhythms_of_annotations(samples: np.ndarray, symbols: list[str], aux: list[str], fs: float,
                           seconds: float) -> list[tuple[str, float, float]] | None:
    """The rhythm alarms of an annotation file's rhythm changes (each lasting to the next
    change, the last to the record's end); None where it has none."""
    spans = rhythm_spans(list(zip(samples, symbols, aux, strict=True)), fs, seconds)
    if not spans:
        return None
    return [(_AUX_ALARM[note], t, end) for note, t, end in spans if note in _AUX_ALARM and end > t]


def checked(found: object, n_samples: int, name: str) -> np.ndarray:
    """``found`` as sorted unique sample indices within the signal, or DetectorError saying why."""
    try:
        arr = np.asarray(found)
    except Exception as exc:  # noqa: BLE001 - any object a plug-in may return
        raise DetectorError(f"{name}: its result is not an array ({exc.__class__.__name__})") from exc
    if arr.size == 0:
        return np.zeros(0, int)
    if arr.ndim != 1:
        raise DetectorError(f"{name}: expected a 1-d list of sample indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr.astype(np.float64)).all():
        raise DetectorError(f"{name}: sample indices must be finite numbers, got {arr.dtype}")
    if (arr != np.round(arr)).any():
        raise DetectorError(f"{name}: sample indices must be whole numbers")
    idx = arr.astype(np.int64)
    if idx.min() < 0 or idx.max() >= n_samples:
        raise DetectorError(f"{name}: sample indices must lie in 0..{n_samples - 1}, got {idx.min()}..{idx.max()}")
    return np.unique(idx)


def checked_labelled(found: object, n_samples: int, name: str) -> tuple[np.ndarray, list[str] | None]:
    """``found`` as sample indices and, where it is ``(samples, symbols)``, each beat's class
    (``MIT_KIND``: N, V, S, F, P; Q for other beat symbols), or DetectorError saying why."""
    if not (isinstance(found, tuple) and len(found) == 2):
        return checked(found, n_samples, name), None
    samples, symbols = found
    idx = checked(samples, n_samples, name)
    symbols = list(symbols) if not isinstance(symbols, str) else None
    if symbols is None or len(symbols) != np.asarray(samples).size:
        raise DetectorError(f"{name}: give one symbol per sample index")
    if idx.size != len(symbols):
        raise DetectorError(f"{name}: two beats at one sample")
    bad = sorted({str(x) for x in symbols if x not in BEAT_SYMBOLS})
    if bad:
        raise DetectorError(f"{name}: {', '.join(bad[:5])} are not MIT-BIH beat symbols")
    order = np.argsort(np.asarray(samples, np.float64), kind="stable")
    return idx, [MIT_KIND.get(symbols[i], "Q") for i in order]


@dataclass(frozen=True)
class PythonDetector:
    """A callable ``(lead: (samples,), fs) -> sample indices`` (or ``(samples, symbols)``) on one lead."""

    name: str
    fn: Callable[[np.ndarray, float], object]

    def __call__(self, signal: np.ndarray, fs: float) -> np.ndarray:
        return self.classify(signal, fs)[0]

    def classify(self, signal: np.ndarray, fs: float) -> tuple[np.ndarray, list[str] | None]:
        """Sample indices and, where the plug-in classifies, each beat's class."""
        a = self.analyse(signal, fs)
        return a.samples, a.kinds

    def analyse(self, signal: np.ndarray, fs: float) -> Analysis:
        """Beats, their classes where it classifies, and rhythms where it reports them."""
        try:
            found = self.fn(np.asarray(signal, np.float64), fs)
        except Exception as exc:  # noqa: BLE001 - a plug-in's failure is reported, the run goes on
            raise DetectorError(f"{self.name} failed: {exc.__class__.__name__}: {exc}") from exc
        if not isinstance(found, dict):
            return Analysis(*checked_labelled(found, len(signal), self.name))
        unknown = sorted(set(found) - {"beats", "symbols", "rhythms"})
        if unknown or "beats" not in found:
            raise DetectorError(f"{self.name}: an answer as a dict has beats, and may have symbols and rhythms"
                                f"{'; not ' + ', '.join(map(str, unknown)) if unknown else ''}"[:200])
        beats = found["beats"] if found.get("symbols") is None else (found["beats"], found["symbols"])
        samples, kinds = checked_labelled(beats, len(signal), self.name)
        rhythms = None if found.get("rhythms") is None else \
            checked_rhythms(found["rhythms"], len(signal) / fs, self.name)
        return Analysis(samples, kinds, rhythms)


@dataclass(frozen=True)
class CommandDetector:
    """An external program: ``command`` with ``{record}`` replaced by a WFDB record's name (in
    its working directory, one lead ``ECG`` in mV); it writes ``{record}.{extension}``.

    Attributes:
        timeout_s: how long it may run on one record.
        classifies: its beat symbols are classes (a beat classifier); otherwise only where the
            beats are is read (a QRS detector writes N for every beat, as for ``bxb``).
    """

    name: str
    command: str
    extension: str = "qrs"
    timeout_s: float = 120.0
    classifies: bool = False

    def __call__(self, signal: np.ndarray, fs: float) -> np.ndarray:
        return self.classify(signal, fs)[0]

    def classify(self, signal: np.ndarray, fs: float) -> tuple[np.ndarray, list[str] | None]:
        """Sample indices and, for a classifier, each beat's class (from the symbols it wrote)."""
        a = self.analyse(signal, fs)
        return a.samples, a.kinds

    def analyse(self, signal: np.ndarray, fs: float) -> Analysis:
        """Beats, classes for a classifier, and rhythms where its file has rhythm changes."""
        with tempfile.TemporaryDirectory(prefix="twin-detector-") as tmp:
            x = np.asarray(signal, np.float64).reshape(-1, 1)
            wfdb.wrsamp("rec", fs=fs, units=["mV"], sig_name=["ECG"], p_signal=x, fmt=["16"],
                        adc_gain=[1000.0], baseline=[0], write_dir=tmp)
            args = [a.replace("{record}", "rec") for a in shlex.split(self.command)]
            try:
                done = subprocess.run(args, cwd=tmp, capture_output=True, timeout=self.timeout_s, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DetectorError(f"{self.name} could not run: {exc.__class__.__name__}: {exc}") from exc
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
                raise DetectorError(f"{self.name} exited with {done.returncode}: {' | '.join(tail)}")
            path = Path(tmp) / f"rec.{self.extension}"
            if not path.exists():
                raise DetectorError(f"{self.name} wrote no annotation file rec.{self.extension}")
            try:
                ann = wfdb.rdann(str(Path(tmp) / "rec"), self.extension)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is the detector's error
                raise DetectorError(f"{self.name}: its annotation file is unreadable ({exc.__class__.__name__})") \
                    from exc
            rows = [(int(s), sym) for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
            found = rhythms_of_annotations(ann.sample, ann.symbol, ann.aux_note, fs, len(x) / fs)
            rhythms = None if found is None else checked_rhythms(found, len(x) / fs, self.name)
            if not self.classifies:
                return Analysis(checked([r[0] for r in rows], len(x), self.name), None, rhythms)
            return Analysis(*checked_labelled(([r[0] for r in rows], [r[1] for r in rows]), len(x), self.name),
                            rhythms)


XQRS_MAX_FS = 500  # XQRS found every beat of a twin at 250 and 500 Hz and none at 1-10 kHz


def _xqrs(x: np.ndarray, fs: float) -> np.ndarray:
    """XQRS at the record's rate, or at ``XQRS_MAX_FS`` (band-limited, as a monitor's ECG channel
    is) for records above it (pacer-pulse tests), its beats mapped back to the record's samples."""
    from wfdb import processing

    if fs <= XQRS_MAX_FS or fs != int(fs):
        return processing.xqrs_detect(x, fs, verbose=False)
    from models.rhythm.pacing import resample

    y = resample(np.asarray(x, np.float32)[:, None], int(fs), XQRS_MAX_FS)[:, 0].astype(np.float64)
    found = processing.xqrs_detect(y, XQRS_MAX_FS, verbose=False)
    return np.unique(np.minimum(len(x) - 1, np.round(np.asarray(found) * fs / XQRS_MAX_FS).astype(np.int64)))


def _neurokit(method: str) -> Callable[[np.ndarray, float], np.ndarray]:
    def detect(x: np.ndarray, fs: float) -> np.ndarray:
        import neurokit2 as nk

        clean = nk.ecg_clean(x, sampling_rate=int(fs), method="neurokit" if method == "neurokit" else method)
        return np.asarray(nk.ecg_peaks(clean, sampling_rate=int(fs), method=method)[1]["ECG_R_Peaks"], int)
    return detect


BUILTIN: dict[str, Callable[[np.ndarray, float], object]] = {
    "xqrs": _xqrs, "neurokit2": _neurokit("neurokit"), "pantompkins": _neurokit("pantompkins1985")}


def detector(spec: str) -> PythonDetector | CommandDetector:
    """A built-in detector by name, ``py:package.module:function`` for a Python one,
    ``cmd:<command with {record}>`` for an external one, ``classify:<command with {record}>``
    for an external beat classifier.

    Raises:
        DetectorError: an unknown name, or a Python function that cannot be imported.
    """
    for prefix in ("cmd:", "classify:"):
        if spec.startswith(prefix):
            command = spec[len(prefix):]
            if "{record}" not in command or not command.split():
                raise DetectorError(f"{spec!r}: the command must name the record as {{record}}")
            return CommandDetector(command.split()[0], command, classifies=prefix == "classify:")
    if spec.startswith("py:"):
        import importlib

        module, _, name = spec[3:].partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise DetectorError(f"{spec!r}: cannot import {name!r} from {module!r} ({exc.__class__.__name__})") \
                from None
        if not callable(fn):
            raise DetectorError(f"{spec!r}: {name!r} is not callable")
        return PythonDetector(spec[3:], fn)
    if spec not in BUILTIN:
        raise DetectorError(f"unknown detector {spec!r}; built in: {', '.join(BUILTIN)}, "
                            "or py:module:function, cmd:<command with {record}>, classify:<command with {record}>")
    return PythonDetector(spec, BUILTIN[spec])
