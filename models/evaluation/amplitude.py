"""Twins of millivolt references against the references: per-lead amplitude and ST level.

``python -m models.evaluation.amplitude [--records 30] [--out docs/amplitude-twins.json]``: for
CPSC2018 records in a regular rhythm (none of them in the generator's training set, and a
country and device of their own), the twin registered from the record (scales measured from it)
is drawn in the record's own state at the record's own rate for 20 s, and each lead is compared
with the record's:
- band SD (the 0.5-40 Hz band's RMS), twin over reference;
- QRS peak-to-peak of the median beat (R-60 to R+80 ms), twin over reference;
- ST level of the median beat at J+60 ms (R+100 ms) against the PR baseline (R-80 to R-60 ms),
  twin minus reference in mV.
Beats are found by XQRS on lead II of each signal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import wfdb
import wfdb.processing as wp
from scipy.signal import resample_poly

from models.amplitude import lead_scales, to_mv
from models.conditions import CardiacState
from models.data.cpsc2018 import read_header
from models.data.preprocess import band
from models.rhythm import BeatSchedule
from models.rhythm.morphology import bank_for, rhythm_of
from models.rhythm.render import BankError, BeatRenderer, bank_seed
from models.rhythm.track import RhythmTrack

REGULAR = {"Normal": {"NORM": 1.0, "SR": 1.0}, "RBBB": {"CRBBB": 1.0, "SR": 1.0}, "LBBB": {"CLBBB": 1.0, "SR": 1.0},
           "I-AVB": {"1AVB": 1.0, "SR": 1.0}, "STD": {"STD_": 1.0, "SR": 1.0}, "STE": {"SR": 1.0}}
SECONDS = 20.0


def median_beat(x: np.ndarray, fs: float, r: np.ndarray) -> np.ndarray:
    """The median of the beats around R peaks ``r``, R-200 ms to R+400 ms, (samples, leads)."""
    a, b = int(0.2 * fs), int(0.4 * fs)
    r = r[(r >= a) & (r + b < len(x))]
    return np.median(np.stack([x[i - a:i + b] for i in r]), 0)


def beat_figures(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(band SD, QRS peak-to-peak, ST at J+60 ms) per lead of ``x`` in mV."""
    bx = band(np.asarray(x, np.float64), fs)
    r = wp.xqrs_detect(bx[:, 1], fs=fs, verbose=False)
    # XQRS marks near the R peak: moved to lead II's largest deflection within 50 ms
    w = int(0.05 * fs)
    r = np.array([i - w + int(np.argmax(np.abs(bx[max(0, i - w):i + w, 1]))) for i in r if i >= w])
    m = median_beat(bx, fs, r)
    at = int(0.2 * fs)  # R in the median beat
    qrs = m[at - int(0.06 * fs):at + int(0.08 * fs)]
    base = m[at - int(0.08 * fs):at - int(0.06 * fs)].mean(0)
    st = m[at + int(0.10 * fs)] - base
    return bx.std(0), qrs.max(0) - qrs.min(0), st


def evaluate(model, data: Path, records: int = 30) -> dict:
    from twin_engine.config import Settings
    from twin_engine.worker.references import References

    refs = References(Settings(data_dir=data), model)
    fs = model.meta.fs
    rows, no_bank = [], []
    for hea in sorted((data / "cpsc2018").glob("*.hea")):
        if len(rows) >= records:
            break
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        h = read_header(rec.comments)
        if len(h.dx) != 1 or h.dx[0] not in REGULAR:
            continue
        dx = h.dx[0]
        x = resample_poly(rec.p_signal[: int(SECONDS * rec.fs)], fs, int(rec.fs), axis=0)
        r = wp.xqrs_detect(band(x, fs)[:, 1], fs=fs, verbose=False)
        if len(r) < 5:
            continue
        hr = 60 * fs / float(np.median(np.diff(r)))
        state = CardiacState(REGULAR[dx], float(np.clip(hr, 40, 150)))
        ref = refs.read({"wfdb": f"cpsc2018/{hea.stem}"}, state)
        seed = bank_seed(hea.stem)
        try:
            bank = bank_for(model, ref.base, state, seed)
        except BankError:  # the service falls back to the model's own windows for such a twin
            no_bank.append(hea.stem)
            continue
        ref = ref.calibrated(bank)  # as render and the service do
        track = RhythmTrack(BeatSchedule(rhythm_of(state), 0.0, seed), BeatRenderer(bank, seed))
        twin = to_mv(np.concatenate([track.window(float(k), fs)[0] for k in range(int(SECONDS))]), ref.mv_scale)
        real, gen = beat_figures(x, fs), beat_figures(twin, fs)
        rows.append({"record": hea.stem, "dx": dx, "heart_rate": round(hr, 1),
                     "scale_measured": np.round(lead_scales(x, fs), 4).tolist(),
                     "sd_ratio": np.round(gen[0] / real[0], 3).tolist(),
                     "qrs_ratio": np.round(gen[1] / real[1], 3).tolist(),
                     "st_real_mv": np.round(real[2], 3).tolist(), "st_twin_mv": np.round(gen[2], 3).tolist()})
    leads = list(model.meta.leads)
    sd = np.array([r["sd_ratio"] for r in rows])
    qrs = np.array([r["qrs_ratio"] for r in rows])
    st = np.abs(np.array([r["st_twin_mv"] for r in rows]) - np.array([r["st_real_mv"] for r in rows]))
    return {"records": len(rows), "seconds": SECONDS, "leads": leads, "no_bank": no_bank,
            "sd_ratio_median": dict(zip(leads, np.round(np.median(sd, 0), 3).tolist(), strict=True)),
            "sd_within_10pct_share": round(float(np.mean(np.abs(sd - 1) <= 0.1)), 3),
            "sd_abs_error_median": round(float(np.median(np.abs(sd - 1))), 3),
            "qrs_ratio_median": dict(zip(leads, np.round(np.median(qrs, 0), 3).tolist(), strict=True)),
            "qrs_within_10pct_share": round(float(np.mean(np.abs(qrs - 1) <= 0.1)), 3),
            "qrs_abs_error_median": round(float(np.median(np.abs(qrs - 1))), 3),
            "st_abs_error_median_mv": dict(zip(leads, np.round(np.median(st, 0), 3).tolist(), strict=True)),
            "st_within_0_05_mv_share": round(float(np.mean(st <= 0.05)), 3),
            "per_record": rows}


def main(argv: list[str] | None = None) -> int:
    from models.twin import TwinModel
    from twin_engine.config import REPO_ROOT

    ap = argparse.ArgumentParser(description="twins of mV references against the references")
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "default")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    ap.add_argument("--records", type=int, default=30)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "amplitude-twins.json")
    a = ap.parse_args(argv)
    res = evaluate(TwinModel.load(a.model), a.data, a.records)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "per_record"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
