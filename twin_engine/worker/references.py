"""Base vectors from a registration's reference: stored, inline samples or WFDB records read
from ``data_dir`` only, each bounded (``max_reference_records``, ``max_reference_seconds``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from models.data.preprocess import to_model_input
from models.data.ptbxl import DataError, read_wfdb_signal
from models.twin import TwinModel
from stream.events import EventError
from twin_engine.config import Settings


class References:
    """Turns a ``register`` event's ``reference`` into the patient's base vector.

    Args:
        settings: ``data_dir`` and the reference limits.
        model: encodes the reference (its encoder decides the base vector).
    """

    def __init__(self, settings: Settings, model: TwinModel) -> None:
        self.settings, self.model = settings, model

    def base_vector(self, ref: dict[str, Any]) -> np.ndarray:
        """The unit-norm base vector of ``ref``; EventError saying why it cannot be had.
        Blocking (reads files, runs the encoder): call it in a thread."""
        fs = self.model.meta.fs
        leads = len(self.model.meta.leads)
        try:
            if "base_vector" in ref:
                v = np.asarray(ref["base_vector"], np.float64)  # float32 would overflow to inf on the way
                if v.shape != (self.model.ibe.cfg.base_dim,) or not np.isfinite(v).all():
                    raise EventError(f"base_vector must be {self.model.ibe.cfg.base_dim} finite numbers")
                v = v / max(1e-300, float(np.abs(v).max()))  # scaled first: the norm of 1e308s is inf
                return (v / max(1e-8, float(np.linalg.norm(v)))).astype(np.float32)
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
                    headers.append((p, header.fs))
                    seconds += (header.sig_len or 0) / max(1e-9, float(header.fs or 0))
                self._check_reference_seconds(seconds)
                refs = [to_model_input(read_wfdb_signal(p), rec_fs, fs, leads) for p, rec_fs in headers]
            else:
                x = np.asarray(ref["samples"], np.float64)  # as given: float32 would overflow to inf
                ref_fs = ref.get("fs", fs)
                if isinstance(ref_fs, bool) or not isinstance(ref_fs, (int, float)) or not 50 <= ref_fs <= 10_000:
                    raise EventError(f"reference fs must be 50-10000 Hz, got {ref_fs!r}")
                self._check_reference_seconds(len(x) / float(ref_fs))
                refs = [to_model_input(x, float(ref_fs), fs, leads)]
            base = self.model.encode(refs)
            if not np.isfinite(base).all():  # a twin without a finite base vector streams NaN
                raise EventError("the reference gives no finite base vector")
            return base
        except (DataError, ValueError, TypeError) as exc:
            if isinstance(exc, EventError):
                raise
            raise EventError(f"bad reference: {exc}") from exc

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
