"""Base vectors and lead scales from a registration's reference: stored, inline samples or WFDB
records read from ``data_dir`` only, each bounded (``max_reference_records``,
``max_reference_seconds``). A reference in mV gives the twin its own amplitudes; one without
(z-scores, a bare base vector) gets the amplitude model's for the patient's state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from models.amplitude import AmplitudeError, AmplitudeModel, lead_scales, qrs_scale
from models.conditions import CardiacState
from models.data.preprocess import to_model_input
from models.data.ptbxl import DataError, read_wfdb_signal
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
        settings: ``data_dir``, the reference limits, the model folder (its ``amplitude.json``).
        model: encodes the reference (its encoder decides the base vector).
    """

    def __init__(self, settings: Settings, model: TwinModel) -> None:
        self.settings, self.model = settings, model
        self.amplitude = AmplitudeModel.for_model(settings.model_path)

    def read(self, ref: dict[str, Any], state: CardiacState) -> Reference:
        """The base vector of ``ref`` and the twin's lead scales: measured where ``ref`` is in mV
        (or uV), else predicted for ``state``. EventError saying why it cannot be had. Blocking
        (reads files, runs the encoder): call it in a thread."""
        fs = self.model.meta.fs
        scales: list[np.ndarray] = []
        mv: list[np.ndarray] = []  # the references in mV, at the model's rate and band
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

                headers, seconds = [], 0.0
                for path in paths:  # every header first: the whole reference's length, before any signal
                    p = self._reference_path(path)
                    try:
                        header = wfdb.rdheader(str(p))
                    except Exception:
                        raise EventError(f"cannot read WFDB header {path!r} (no such record under data_dir, "
                                         "or not WFDB)") from None
                    headers.append((p, header.fs, _to_mv(header.units)))
                    seconds += (header.sig_len or 0) / max(1e-9, float(header.fs or 0))
                self._check_reference_seconds(seconds)
                refs = []
                for p, rec_fs, k in headers:
                    x = read_wfdb_signal(p)
                    refs.append(to_model_input(x, rec_fs, fs, leads))
                    if k is not None:
                        scales.append(lead_scales(x * k, rec_fs))
                        mv.append(refs[-1] * scales[-1])
            else:
                x = np.asarray(ref["samples"], np.float64)  # as given: float32 would overflow to inf
                ref_fs = ref.get("fs", fs)
                if isinstance(ref_fs, bool) or not isinstance(ref_fs, (int, float)) or not 50 <= ref_fs <= 10_000:
                    raise EventError(f"reference fs must be 50-10000 Hz, got {ref_fs!r}")
                self._check_reference_seconds(len(x) / float(ref_fs))
                units = ref.get("units", "mV")
                if units not in SAMPLE_UNITS:
                    raise EventError(f"reference units must be one of {', '.join(SAMPLE_UNITS)}, got {units!r}")
                refs = [to_model_input(x, float(ref_fs), fs, leads)]
                if SAMPLE_UNITS[units] is not None:
                    scales.append(lead_scales(x * SAMPLE_UNITS[units], float(ref_fs)))
                    mv.append(refs[-1] * scales[-1])
            base = self.model.encode(refs)
            if not np.isfinite(base).all():  # a twin without a finite base vector streams NaN
                raise EventError("the reference gives no finite base vector")
            if scales:
                return Reference(base, np.median(np.stack(scales), 0).astype(np.float32), MV_MEASURED,
                                 self._qrs_heights(mv))
            return Reference(base, self.amplitude.predict(state), MV_PREDICTED)
        except AmplitudeError as exc:
            raise EventError(f"bad reference: {exc}") from None
        except (DataError, ValueError, TypeError) as exc:
            if isinstance(exc, EventError):
                raise
            raise EventError(f"bad reference: {exc}") from exc

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
                             f"this one {seconds:.0f} s")

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


def _to_mv(units: list[str] | None) -> float | None:
    """The factor from a WFDB header's signal units to mV (None: not a voltage, e.g. the
    z-scored PTB-XL subset's ``zscore``)."""
    found = {(u or "").strip() for u in units or []}
    if len(found) == 1:
        return MV_PER_UNIT.get(found.pop())
    return None
