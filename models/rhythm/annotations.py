"""Ground truth as a WFDB annotation file, in MIT-BIH's codes: a beat annotation per beat (N, V,
A, F, /, Q) and a rhythm-change annotation (``+`` with its aux note: ``(N``, ``(AFIB``, ``(VT``,
``(P`` for paced rhythm, ...) where each episode begins, which ``wfdb.rdann`` and PhysioNet's ``bxb`` and ``epicmp`` read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import wfdb

from models.rhythm.beats import BEAT_SYMBOLS, MIT_KIND, MIT_RHYTHM, Beat, Episode

ANNOTATED = "annotated"  # the aux of the noise note that ends an unannotated (unreadable) stretch
AUX_RHYTHM = {v: k for k, v in MIT_RHYTHM.items() if k in ("sinus", "sinus_brady", "afib", "aflutter", "bigeminy",
                                                           "trigeminy", "svt", "vt", "asystole", "vf",
                                                           "paced")}


def write_annotations(record_name: str, out_dir: Path, fs: float, start: float, beats: Sequence[Beat],
                      episodes: Sequence[Episode], extension: str = "atr",
                      extra: Sequence[tuple[int, str, str]] = ()) -> Path:
    """Write the beats and rhythm episodes of a record that begins at stream time ``start``
    (and ``extra`` (sample, symbol, aux note) rows: noise annotations, say).

    Returns:
        the annotation file's path.
    """
    rows = [(int(round((e.start - start) * fs)), "+", e.aux) for e in episodes]
    rows += [(int(round((b.time - start) * fs)), b.symbol, "") for b in beats] + list(extra)
    rows = [r for r in rows if r[0] >= 0]
    if not rows:  # wrann refuses an empty file; an asystole from the start still has its rhythm
        rows = [(0, "+", "(N")]
    return write_rows(record_name, out_dir, rows, extension, fs)


def write_rows(record_name: str, out_dir: Path, rows: Sequence[tuple], extension: str = "atr",
               fs: float | None = None) -> Path:
    """(sample, symbol, aux note[, subtype]) rows as a WFDB annotation file, in sample order with
    a rhythm change ('+') before a beat at the same sample.

    Returns:
        the annotation file's path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r[0], r[1] != "+"))
    wfdb.wrann(record_name, extension, np.array([r[0] for r in rows]), symbol=[r[1] for r in rows],
               subtype=np.array([r[3] if len(r) > 3 else 0 for r in rows]), aux_note=[r[2] for r in rows], fs=fs,
               write_dir=str(out_dir))
    return out_dir / f"{record_name}.{extension}"


def read_annotations(record_path: str | Path, extension: str = "atr") -> tuple[list[Beat], list[Episode]]:
    """Beats and rhythm episodes of an annotation file (times in seconds from the record's
    start); beats by their class (``MIT_KIND``, Q for the rest), other annotations than beats
    and rhythm changes are left out, and rhythms we do not make are skipped."""
    ann = wfdb.rdann(str(record_path), extension)
    fs = float(ann.fs)
    rows = list(zip(ann.sample, ann.symbol, ann.aux_note, strict=True))
    beats = [Beat(s / fs, MIT_KIND.get(sym, "Q")) for s, sym, _ in rows if sym in BEAT_SYMBOLS]
    episodes = [Episode(AUX_RHYTHM[aux], t, end) for aux, t, end in rhythm_spans(rows, fs) if aux in AUX_RHYTHM]
    return beats, episodes


def rhythm_spans(rows: Sequence[tuple[int, str, str]], fs: float,
                 end: float | None = None) -> list[tuple[str, float, float | None]]:
    """(aux note, start, end) in seconds of each rhythm change ('+') among (sample, symbol, aux)
    rows in sample order: each lasts to the next change, the last to ``end``."""
    changes = [(s / fs, (aux or "").strip("\x00")) for s, sym, aux in rows if sym == "+"]
    return [(aux, t, changes[i + 1][0] if i + 1 < len(changes) else end) for i, (t, aux) in enumerate(changes)]
