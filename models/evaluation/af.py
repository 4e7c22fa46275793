"""The reference AF episode detector (``models.stress.af``) on real records with cardiologists'
rhythm annotations: every MIT-BIH and CPSC 2021 record here, from their reference beats and from
XQRS's (lead 0), scored as ``epicmp`` (episode and duration Se / +P, gross).

``python -m models.evaluation.af [--out docs/af-detector.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import wfdb
import wfdb.processing as wp

from models.rhythm.beats import BEAT_SYMBOLS
from models.stress.af import af_episodes
from models.stress.alarms import pooled, score_episodes


def reference(path: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Reference beat times and AF episodes ((AFIB to the next rhythm change) of a record."""
    ann = wfdb.rdann(str(path), "atr")
    fs = float(ann.fs)
    header = wfdb.rdheader(str(path))
    end = header.sig_len / header.fs
    beats = np.array([s / fs for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS])
    changes = [(s / fs, (a or "").strip("\x00")) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note,
                                                                          strict=True) if sym == "+"]
    af: list[tuple[float, float]] = []
    for i, (t, aux) in enumerate(changes):
        if aux.startswith("(AFIB"):
            stop = changes[i + 1][0] if i + 1 < len(changes) else end
            if af and t <= af[-1][1]:
                af[-1] = (af[-1][0], stop)
            else:
                af.append((t, stop))
    return beats, af


def evaluate(data: Path) -> dict:
    out = {}
    for db in ("mitdb", "cpsc2021"):
        ref_scores, xqrs_scores = [], []
        for hea in sorted((data / db).glob("*.hea")):
            path = hea.with_suffix("")
            if not hea.with_suffix(".atr").is_file():
                continue
            beats, truth = reference(path)
            ref_scores.append(score_episodes(truth, af_episodes(beats)))
            rec = wfdb.rdrecord(str(path), channels=[0])
            found = wp.xqrs_detect(rec.p_signal[:, 0], fs=rec.fs, verbose=False) / rec.fs
            xqrs_scores.append(score_episodes(truth, af_episodes(found)))
        out[db] = {"records": len(ref_scores), "reference_beats": pooled(ref_scores).to_dict(),
                   "xqrs_beats": pooled(xqrs_scores).to_dict()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    res = evaluate(a.data)
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
