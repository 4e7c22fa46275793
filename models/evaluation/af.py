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

from models.rhythm.annotations import read_annotations
from models.stress.af import af_episodes
from models.stress.alarms import pooled, score_episodes


def reference(path: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Reference beat times and AF episodes ((AFIB to the next rhythm change) of a record."""
    header = wfdb.rdheader(str(path))
    beats, episodes = read_annotations(path)
    af: list[tuple[float, float]] = []
    for e in episodes:
        if e.rhythm != "afib":
            continue
        stop = header.sig_len / header.fs if e.end is None else e.end
        if af and e.start <= af[-1][1]:  # one (AFIB after another: one episode
            af[-1] = (af[-1][0], stop)
        else:
            af.append((e.start, stop))
    return np.array([b.time for b in beats]), af


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
