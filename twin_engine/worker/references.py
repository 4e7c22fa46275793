"""Base vectors and lead scales from a registration's reference: stored, inline samples or WFDB
records read from ``data_dir`` only, each bounded (``max_reference_records``,
``max_reference_seconds``). A reference in mV gives the twin its own amplitudes; one without
(z-scores, a bare base vector) gets the amplitude model's for the patient's state. Leads are
found by name (a WFDB record's signal names, inline samples' ``leads``); a reference in mV with
only some of the 12 has the others estimated from them (``models.leads``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from models.amplitude import SCALE_RANGE_MV, AmplitudeError, AmplitudeModel, lead_scales, qrs_scale
from models.conditions import CardiacState
from models.data.preprocess import to_model_input
from models.data.ptbxl import DataError, read_wfdb_signal
from models.leads import LeadCompletion, LeadError, lead_columns
from models.rhythm.render import BankError, BeatBank
from models.twin import TwinModel
from stream.events import EventError
from twin_engine.config import Settings

MV_MEASURED = "reference"  # the reference's band SD per lead
MV_MEASURED_QRS = "reference QRS"  # the reference's QRS height per lead, on the twin's own QRS
MV_PREDICTED = "amplitude model"
MV_PER_UNIT = {"mV": 1.0, "uV": 1e-3, "V": 1e3}  # a WFDB header's voltage units
# what an inline reference's ``units`` may say, and the factor to mV (None: no absolute amplitude)
SAMPLE_UNITS = {"mV": MV_PER_UNIT["mV"], "uV": MV_PER_UNIT["uV"], "zscore": None}


class Reference(NamedTuple):
    base: np.ndarray  # base vector (unit norm, or about it where the extractor erases states)
    mv_scale: np.ndarray  # each lead's scale in mV (models.amplitude)
    mv_source: str  # MV_MEASURED, MV_MEASURED_QRS (once ``calibrated``) or MV_PREDICTED
    # the reference's median-beat QRS height per lead in mV, as a beat bank measures it (None:
    # not in mV, or too few beats): ``calibrated`` matches the twin's bank to it
    qrs_mv: np.ndarray | None = None
    estimated: tuple[str, ...] = ()  # leads a reference (one of its records) lacked, estimated from the others

    def calibrated(self, bank: BeatBank) -> Reference:
        """With the scales that give ``bank``'s QRS (the twin's, z-scores) the reference's height
        in every lead (``models.amplitude.qrs_scale``), where the reference has one and the two
        agree; else as it is."""
        if self.qrs_mv is None:
            return self
        scale = qrs_scale(self.qrs_mv, bank.scale, self.mv_scale)
        return self if scale is None else self._replace(mv_scale=scale, mv_source=MV_MEASURED_QRS)


class References:
    """Turns a ``register`` event's ``reference`` into the patient's base vector and lead scales.

    Args:
        settings: ``data_dir``, the reference limits, the model folder (its ``amplitude.json``, ``leads.json``).
        model: encodes the reference (its encoder decides the base vector).
    """

    def __init__(self, settings: Settings, model: TwinModel) -> None:
        self.settings, self.model = settings, model
        self.amplitude = AmplitudeModel.for_model(settings.model_path)
        self.completion = LeadCompletion.for_model(settings.model_path)

    def read(self, ref: dict[str, Any], state: CardiacState) -> Reference:
        """The base vector of ``ref`` and the twin's lead scales: measured where ``ref`` is in mV
        (or uV), else predicted for ``state``. EventError saying why it cannot be had. Blocking
        (reads files, runs the encoder): call it in a thread."""
        fs = self.model.meta.fs
        scales: list[np.ndarray] = []
        mv: list[np.ndarray] = []  # the references in mV, at the model's rate and band
        refs: list[np.ndarray] = []  # model input
        estimated: set[int] = set()  # the model leads one reference or another lacked
        leads = len(self.model.meta.leads)
        try:
            if "base_vector" in ref:
                v = np.asarray(ref["base_vector"], np.float64)  # float32 would overflow to inf on the way
                if v.shape != (self.model.ibe.cfg.base_dim,) or not np.isfinite(v).all():
                    raise EventError(f"base_vector must be {self.model.ibe.cfg.base_dim} finite numbers")
                v = v / max(1e-300, float(np.abs(v).max()))  # scaled first: the norm of 1e308s is inf
                # onto the sphere, then erased as the extractor erases its own vectors
                v = torch.from_numpy((v / max(1e-8, float(np.linalg.norm(v)))).astype(np.float32))
                base = self.model.ibe.erase(v.to(self.model.device)).cpu().numpy()  # the erasure's buffers sit with the model
                return Reference(base, self.amplitude.predict(state), MV_PREDICTED)
            if "wfdb" in ref:
                paths = ref["wfdb"] if isinstance(ref["wfdb"], list) else [ref["wfdb"]]
                if not paths:
                    raise EventError("wfdb must name at least one record")
                limit = self.settings.max_reference_records
                if len(paths) > limit:
                    raise EventError(f"a reference names at most {limit} WFDB records (max_reference_records), "
                                     f"this one {len(paths)}")
                import wfdb

                start, length = _stretch(ref)
                headers, seconds = [], 0.0
                for path in paths:  # every header first: the whole reference's length, before any signal
                    p = self._reference_path(path)
                    try:
                        header = wfdb.rdheader(str(p))
                    except Exception:
                        raise EventError(f"cannot read WFDB header {path!r} (no such record under data_dir, "
                                         "or not WFDB)") from None
                    rec_fs, n = float(header.fs or 0), int(header.sig_len or 0)
                    a = int(round(start * rec_fs))
                    if a >= n:
                        raise EventError(f"WFDB record {path!r} holds {n / max(1e-9, rec_fs):.0f} s: start {start:g} s "
                                         "lies past its end")
                    b = n if length is None else min(n, a + int(round(length * rec_fs)))
                    headers.append((p, rec_fs, _to_mv(header.units), self._columns(header.sig_name or [], path), a, b))
                    seconds += (b - a) / max(1e-9, rec_fs)
                self._check_reference_seconds(seconds)
                for p, rec_fs, k, cols, a, b in headers:
                    x = read_wfdb_signal(p, sampfrom=a, sampto=b)
                    estimated |= self._read_one(x, rec_fs, cols, k, refs, scales, mv)
            else:
                x = np.asarray(ref["samples"], np.float64)  # as given: float32 would overflow to inf
                ref_fs = ref.get("fs", fs)
                if isinstance(ref_fs, bool) or not isinstance(ref_fs, (int, float)) or not 50 <= ref_fs <= 10_000:
                    raise EventError(f"reference fs must be 50-10000 Hz, got {ref_fs!r}")
                self._check_reference_seconds(len(x) / float(ref_fs))
                units = ref.get("units", "mV")
                if units not in SAMPLE_UNITS:
                    raise EventError(f"reference units must be one of {', '.join(SAMPLE_UNITS)}, got {units!r}")
                names = ref.get("leads")
                if names is None:
                    cols = None
                    if x.ndim != 2 or x.shape[1] != leads:
                        raise EventError(f"reference samples must be (samples, {leads}) in the model's lead order "
                                         f"({', '.join(self.model.meta.leads)}), or name their columns in leads "
                                         f"(e.g. [\"II\", \"V1\"]); got shape {x.shape}")
                else:
                    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                        raise EventError("reference leads must be a list of lead names")
                    if x.ndim != 2 or x.shape[1] != len(names):
                        raise EventError(f"reference samples have {x.shape[1] if x.ndim == 2 else 0} columns, "
                                         f"leads names {len(names)}")
                    cols = self._columns(names, "samples")
                estimated |= self._read_one(x, float(ref_fs), cols, SAMPLE_UNITS[units], refs, scales, mv)
            base = self.model.encode(refs)
            if not np.isfinite(base).all():  # a twin without a finite base vector streams NaN
                raise EventError("the reference gives no finite base vector")
            names = self.model.meta.leads
            est = tuple(names[j] for j in sorted(estimated))
            if scales:
                qrs = self._qrs_heights(mv)
                if qrs is not None and estimated:  # an estimate's QRS is no height to match
                    qrs[sorted(estimated)] = np.nan
                return Reference(base, np.median(np.stack(scales), 0).astype(np.float32), MV_MEASURED, qrs, est)
            return Reference(base, self.amplitude.predict(state), MV_PREDICTED, None, est)
        except (AmplitudeError, LeadError) as exc:
            raise EventError(f"bad reference: {exc}") from None
        except (DataError, ValueError, TypeError) as exc:
            if isinstance(exc, EventError):
                raise
            raise EventError(f"bad reference: {exc}") from exc

    def _columns(self, names: list[str], where: str) -> list[int | None] | None:
        """The column of each of the model's leads among a reference's ``names`` (None: a lead it
        lacks); None for a record of exactly the model's number of signals naming none of them
        (read in the model's order, as before leads were read by name)."""
        found = lead_columns(names, self.model.meta.leads)
        n = len(self.model.meta.leads)
        if not found:
            if len(names) == n:
                return None
            raise EventError(f"reference {where!r} names none of the model's leads ({', '.join(self.model.meta.leads)}; "
                             f"MIT-BIH's MLII is II): its signals are {', '.join(map(str, names[:16]))}")
        return [found.get(i) for i in range(n)]

    def _read_one(self, x: np.ndarray, rec_fs: float, cols: list[int | None] | None, to_mv: float | None,
                  refs: list, scales: list, mv: list) -> set[int]:
        """Appends one reference's model input (and, in mV, its lead scales and mV signal) to
        ``refs``, ``scales`` and ``mv``. Returns the model leads it lacked, estimated from the
        others (a reference in mV only: the estimate is made from amplitudes)."""
        leads = len(self.model.meta.leads)
        if cols is not None and None not in cols:
            x, cols = x[:, cols], None
        if cols is None:
            refs.append(to_model_input(x, rec_fs, self.model.meta.fs, leads))
            if to_mv is not None:
                scales.append(lead_scales(x * to_mv, rec_fs))
                mv.append(refs[-1] * scales[-1])
            return set()
        present = [i for i, c in enumerate(cols) if c is not None]
        if to_mv is None:
            names = self.model.meta.leads
            raise EventError(f"a reference with {len(present)} of the {leads} leads ({', '.join(names[i] for i in present)}) "
                             "must be in mV or uV: the others are estimated from its amplitudes")
        if len(x) < 2 * rec_fs:  # as to_model_input says of a whole reference, before any filter sees it
            raise EventError(f"reference too short: {len(x) / rec_fs:.1f} s, need at least 2 s")
        got = x[:, [cols[i] for i in present]] * to_mv
        measured = lead_scales(got, rec_fs)  # the present leads' units checked, as a whole reference's
        full = self.completion.complete(got, rec_fs, present)
        lo, hi = SCALE_RANGE_MV
        s = np.clip(full.std(0), lo, hi).astype(np.float32)  # an estimate may be nearly flat (aVL from II)
        s[present] = measured
        refs.append(to_model_input(full, self.completion.fs, self.model.meta.fs, leads))
        scales.append(s)
        mv.append(refs[-1] * s)
        return set(range(leads)) - set(present)

    def _qrs_heights(self, mv: list[np.ndarray]) -> np.ndarray | None:
        """The references' median-beat QRS height per lead (mV), cut and measured as the rhythm
        bank cuts the twin's beats; None where none has beats enough."""
        heights = []
        for x in mv:
            try:
                heights.append(BeatBank.from_windows([x], self.model.meta.fs).scale)
            except BankError:
                continue
        return np.median(np.stack(heights), 0).astype(np.float32) if heights else None

    def _check_reference_seconds(self, seconds: float) -> None:
        limit = self.settings.max_reference_seconds
        if seconds > limit:
            raise EventError(f"a reference holds at most {limit:g} s of ECG (max_reference_seconds), "
                             f"this one {seconds:.0f} s (a WFDB reference may name a stretch: start, seconds)")

    def _reference_path(self, path: Any) -> Path:
        """Where a ``wfdb`` reference lies: under ``data_dir`` (a relative path starts there).
        Events and the HTTP API come from the network, so a path that leaves the data directory
        is refused rather than read from wherever it points on the service's disk (links the
        operator put inside it are followed)."""
        if not isinstance(path, str) or not path:
            raise EventError(f"wfdb reference must be a record path, got {path!r}")
        root = os.path.normpath(os.path.abspath(self.settings.data_dir))
        p = os.path.normpath(os.path.join(root, path))
        if os.path.commonpath([root, p]) != root:
            raise EventError(f"wfdb path {path!r} lies outside the data directory (data_dir {root}); "
                             "reference records are read only from there")
        return Path(p)


def _stretch(ref: dict[str, Any]) -> tuple[float, float | None]:
    """A WFDB reference's ``start`` and ``seconds`` (each record read from ``start`` for
    ``seconds``, or to its end): EventError for anything but non-negative finite numbers."""
    start, length = ref.get("start", 0.0), ref.get("seconds")
    for name, v in (("start", start), ("seconds", length)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0):
            raise EventError(f"reference {name} must be a number of seconds >= 0, got {v!r}")
    if length is not None and length < 2:
        raise EventError(f"reference seconds must be at least 2, got {length!r}")
    return float(start), None if length is None else float(length)


def _to_mv(units: list[str] | None) -> float | None:
    """The factor from a WFDB header's signal units to mV (None: not a voltage, e.g. the
    z-scored PTB-XL subset's ``zscore``)."""
    found = {(u or "").strip() for u in units or []}
    if len(found) == 1:
        return MV_PER_UNIT.get(found.pop())
    return None
