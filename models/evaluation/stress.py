"""The classical Noise Stress Test on real MIT-BIH records: NSTDB noise (bw, ma, em) added to
lead MLII at SNRs from 24 to -6 dB (``models.stress.noise``), each detector scored beat by beat
against the reference annotations (``models.stress.scoring``); with ``--twins`` the same on
twins drawn on a beat schedule (``models.rhythm``), scored against their schedule.

    python -m models.evaluation.stress --out docs/stress-mitdb.json
    python -m models.evaluation.stress --twins --out docs/stress-twins.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import wfdb

from models.rhythm.beats import BEAT_SYMBOLS
from models.stress.detectors import DetectorError, detector
from models.stress.noise import add_noise, read_noise
from models.stress.scoring import gross, score_beats

# clean records most detectors analyse with few errors (nst's advice: errors under noise are
# then the noise's), from the 40 shared ones
RECORDS = ("100", "101", "103", "106", "112", "113", "115", "116", "117", "121")
SNRS = (24, 18, 12, 6, 0, -6)
KINDS = ("bw", "ma", "em")


def mitdb_sources(data: Path, records=RECORDS, seconds: float = 300.0):
    """(name, lead MLII, fs, reference beats, normal beats) of MIT-BIH ``records``' first ``seconds``."""
    for rec_name in records:
        path = str(Path(data) / "mitdb" / rec_name)
        rec = wfdb.rdrecord(path, sampto=int(360 * seconds))
        lead = rec.sig_name.index("MLII") if "MLII" in rec.sig_name else 0
        clean = rec.p_signal[:, lead]
        ann = wfdb.rdann(path, "atr", sampto=len(clean))
        ref = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS])
        normal = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym == "N"])
        yield rec_name, clean, float(rec.fs), ref, normal


def twin_sources(model, data: Path, patients: int = 10, seconds: float = 300.0):
    """The same for twins of held-out PTB-XL patients drawn on a schedule (lead II, in mV at the
    amplitude model's scale, as the service draws a PTB-XL twin): sinus at 75 bpm with isolated
    PVCs (one beat in 20), each in its own morphology, their beats the truth."""
    from models.amplitude import AmplitudeModel
    from models.evaluation.rhythm import held_out_banks
    from models.rhythm import BeatSchedule, Rhythm
    from models.rhythm.render import BeatRenderer
    from models.rhythm.track import RhythmTrack

    fs, amplitude = model.meta.fs, AmplitudeModel.load()
    for i, (rid, bank, state) in enumerate(held_out_banks(model, data, patients)):
        track = RhythmTrack(BeatSchedule(Rhythm("pvc", rate=75.0, probability=0.05), 0.0, i), BeatRenderer(bank, i))
        x, beats, _ = track.window(0.0, int(seconds * fs))
        ref = np.array([int(round(b.time * fs)) for b in beats])
        normal = np.array([int(round(b.time * fs)) for b in beats if b.kind == "N"])
        yield f"ptbxl-{rid}", x[:, 1].astype(np.float64) * float(amplitude.predict(state)[1]), float(fs), ref, normal


def noise_stress(data: Path, records=RECORDS, snrs=SNRS, kinds=KINDS, detectors=("xqrs", "neurokit2", "pantompkins"),
                 seconds: float = 300.0, sources=None) -> dict:
    """Gross Se/+P per detector, noise kind and SNR (and clean), over ``records``' first ``seconds``
    (or over ``sources``: ``mitdb_sources``' form, ``twin_sources`` for the twins)."""
    dets = [detector(d) for d in detectors]
    cells: dict[str, dict[str, list]] = {}
    lead = "MLII" if sources is None else "II"
    sources = list(mitdb_sources(data, records, seconds) if sources is None else sources)
    for ri, (rec_name, clean, fs, ref, normal) in enumerate(sources):
        trials = [("clean", None, clean)]
        for k in kinds:
            noise = read_noise(Path(data) / "nstdb", k, fs, len(clean) / fs, seed=ri)
            for snr in snrs:
                trials.append((k, snr, add_noise(clean, normal if len(normal) else ref, fs, noise[:, :1], snr)[:, 0]))
        for kind, snr, x in trials:
            for d in dets:
                key = f"{d.name}|{kind}|{'' if snr is None else snr}"
                try:
                    found = d(x, fs)
                except DetectorError as exc:
                    cells.setdefault(key, {"scores": [], "errors": []})["errors"].append(f"{rec_name}: {exc}")
                    continue
                cells.setdefault(key, {"scores": [], "errors": []})["scores"].append(score_beats(ref, found, fs))
    out = []
    for key, cell in cells.items():
        name, kind, snr = key.split("|")
        out.append({"detector": name, "noise": kind, "snr_db": None if snr == "" else int(snr),
                    **gross(cell["scores"]).to_dict(), "records": len(cell["scores"]), "errors": cell["errors"]})
    return {"records": [src[0] for src in sources], "seconds": seconds, "lead": lead, "window_ms": 150, "cells": out}


def table(result: dict) -> str:
    """Markdown: Se / +P per detector (rows) and noise at each SNR (columns)."""
    cells = {(c["detector"], c["noise"], c["snr_db"]): c for c in result["cells"]}
    dets = sorted({c["detector"] for c in result["cells"]})
    kinds = [k for k in KINDS if any(c["noise"] == k for c in result["cells"])]
    snrs = sorted({c["snr_db"] for c in result["cells"] if c["snr_db"] is not None}, reverse=True)
    lines = ["| detector | noise | clean | " + " | ".join(f"{s} dB" for s in snrs) + " |",
             "|---|---|---|" + "---|" * len(snrs)]
    for d in dets:
        c0 = cells.get((d, "clean", None))
        for k in kinds:
            row = [f"{100 * cells[(d, k, s)]['se']:.1f} / {100 * cells[(d, k, s)]['ppv']:.1f}" if (d, k, s) in cells
                   else "-" for s in snrs]
            lines.append(f"| {d} | {k} | {100 * c0['se']:.1f} / {100 * c0['ppv']:.1f} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--twins", action="store_true", help="twins of held-out PTB-XL patients drawn on a schedule "
                                                         "(the shipped model), not MIT-BIH records")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "default")
    args = ap.parse_args(argv)
    sources = None
    if args.twins:
        from models.twin import TwinModel

        sources = twin_sources(TwinModel.load(args.model), args.data, seconds=args.seconds)
    result = noise_stress(args.data, seconds=args.seconds, sources=sources)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
