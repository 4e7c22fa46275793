"""A recorded run read back as stress cases: the WFDB records and annotation files a service's
WFDB export wrote (``twin_engine.worker.sinks.WfdbSink``), or ``render``'s without their manifest.

What each record's files say is turned into the manifest entry ``models.stress.suite`` scores:
beats and rhythm episodes from ``.atr``; artifacts from its noise annotations (``~`` with
``kind SNRdB leads`` where one begins, ``clean`` where one ends: the ends are paired with the
artifacts open, the last begun first, so two artifacts that overlap without one inside the other
get each other's ends); the asked states from ``.state`` (``(AFIB HR110``), each with the rhythm
episode it begins in, so steps of a steady rate are scored as in a suite. A record with a stretch
marked unreadable (``~`` subtype -1: the service drew it without beats) is scored up to the
first such stretch (``unannotated_from``): past it, which beats are true is not known.
"""

from __future__ import annotations

import re
from pathlib import Path

import wfdb

from models.rhythm.annotations import ANNOTATED, read_annotations

_STATE = re.compile(r"^\((?P<label>\S*) HR(?P<hr>[0-9.]+)$")


class RecordedError(ValueError):
    """A folder without a record to score, or a damaged annotation file (the message says which)."""


def parse_noise(aux: str) -> tuple[str, float | None, list[str] | None] | None:
    """(kind, SNR dB or None, lead names or None for all) of a noise annotation's aux note
    (``models.stress.artifacts``' note: ``ma 6dB II,V1``, ``lead_off all``); None for ``clean``."""
    parts = aux.strip("\x00").split()
    if not parts or parts[0] == "clean":
        return None
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[1].endswith("dB")):
        raise RecordedError(f"not a noise note: {aux!r}")
    snr = float(parts[1][:-2]) if len(parts) == 3 else None
    leads = None if parts[-1] == "all" else parts[-1].split(",")
    return parts[0], snr, leads


def entry(path: Path) -> dict:
    """The manifest entry of the record at ``path`` (without extension), from its files."""
    header = wfdb.rdheader(str(path))
    fs, seconds = float(header.fs), (header.sig_len or 0) / float(header.fs)
    try:
        beats, episodes = read_annotations(path)
        ann = wfdb.rdann(str(path), "atr")
    except Exception as exc:  # noqa: BLE001 - wfdb raises anything on a damaged file
        raise RecordedError(f"{path}.atr: {exc}") from None
    artifacts, open_, unannotated = [], [], None
    for s, sym, sub, aux in zip(ann.sample, ann.symbol, ann.subtype, ann.aux_note, strict=True):
        if sym != "~" or (aux or "").strip("\x00") == ANNOTATED:
            continue
        if sub == -1:  # unreadable: a stretch without beat annotations (the service's, ``UNANNOTATED``)
            unannotated = s / fs if unannotated is None else unannotated
            continue
        note = parse_noise(aux or "")
        if note is not None:
            open_.append((s / fs, note))
        elif open_:
            start, (kind, snr, leads) = open_.pop()
            artifacts.append({"kind": kind, "start": start, "end": s / fs, "leads": leads, "snr_db": snr})
    artifacts += [{"kind": k, "start": t, "end": seconds, "leads": ld, "snr_db": snr} for t, (k, snr, ld) in open_]
    changes = []
    if Path(f"{path}.state").is_file():
        for s, aux in zip(*(lambda a: (a.sample, a.aux_note))(wfdb.rdann(str(path), "state")), strict=True):
            m = _STATE.match((aux or "").strip("\x00"))
            if m is None:
                continue
            t = s / fs
            rhythm = next((e.rhythm for e in reversed(episodes) if e.start <= t + 1e-9), None)
            changes.append({"at": t, "name": rhythm, "rate": float(m["hr"])})
    out = {"record": path.name, "seconds": seconds, "beats": len(beats),
           "episodes": [{"rhythm": e.rhythm, "start": e.start, "end": e.end} for e in episodes],
           "artifacts": sorted(artifacts, key=lambda a: a["start"]), "changes": changes}
    if unannotated is not None:  # its beats are not all known from here on: scored up to it
        out["unannotated_from"] = unannotated
    return out


def entries(folder: Path) -> list[dict]:
    """The manifest entries of every record of ``folder`` that has beat annotations."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordedError(f"{folder}: no such folder")
    found = [entry(h.with_suffix("")) for h in sorted(folder.glob("*.hea")) if h.with_suffix(".atr").is_file()]
    if not found:
        raise RecordedError(f"{folder}: no WFDB record with an .atr annotation file")
    return found
