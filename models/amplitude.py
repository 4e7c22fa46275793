"""Per-lead amplitude in millivolts: what turns the model's z-scores into mV.

The model works in per-lead z-scores of the 0.5-40 Hz band (``to_model_input``). A lead's *scale*
is that band's SD in mV, the very number ``to_model_input`` divides by, so z x scale is the lead
in mV. A reference in mV gives its own scales (``lead_scales``); one without absolute amplitude
(the z-scored PTB-XL subset, a bare base vector) gets the ``AmplitudeModel``'s: a ridge regression
of log scale per lead on age, sex and statements, fitted on the mV records of LUDB and CPSC2018
(``python -m models.amplitude``; its cross-validated error beside the pooled median's is in the
file it writes).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.conditions import CardiacState
from models.data.preprocess import band

# a lead's band SD in mV: real 12-lead ECGs lie within 0.03-1.5 mV (LUDB and CPSC2018, every lead
# of 270 records); a reference outside this is in other units (uV called mV is 1000x)
SCALE_RANGE_MV = (0.01, 5.0)
# the statements whose effect on amplitude the model learns (present in LUDB or CPSC2018)
STATEMENTS = ("LVH", "CLBBB", "CRBBB", "IRBBB", "LAFB", "1AVB", "AFIB", "PVC", "PAC", "STD_", "ISC_")
SITES = ("ludb", "cpsc2018")
DEFAULT_PATH = Path(__file__).parent / "default" / "amplitude.json"
RAIL_MV = 32.767  # the 16-bit stream's largest value (stream.segments.GAIN = 1000 per mV)
# a QRS calibration this far from the band SD's scale is not trusted (a lead the twin draws
# nearly flat, a reference beat the detector cut wrong): the band SD's is used instead
QRS_TRUST = (0.5, 2.0)


class AmplitudeError(ValueError):
    """A reference whose amplitudes are no ECG's in mV."""


def lead_scales(signal_mv: np.ndarray, fs: float) -> np.ndarray:
    """The band SD of each lead of ``signal_mv`` ((samples, leads) in mV).

    Raises:
        AmplitudeError: a lead outside ``SCALE_RANGE_MV`` (with the lead and the value).
    """
    s = band(np.asarray(signal_mv, np.float64), fs).std(0)
    lo, hi = SCALE_RANGE_MV
    bad = np.flatnonzero(~((s >= lo) & (s <= hi)))
    if len(bad):
        j = int(bad[0])
        raise AmplitudeError(f"reference lead {j + 1} has a band SD of {s[j]:.4g} mV, outside {lo:g}-{hi:g} mV "
                             "of an ECG in mV (sent in other units?)")
    return s.astype(np.float32)


def qrs_scale(reference_qrs_mv: np.ndarray, twin_qrs: np.ndarray, band_scale: np.ndarray) -> np.ndarray | None:
    """Scales that give the twin's QRS the reference's height in every lead: the reference's
    median-beat QRS peak-to-peak (mV) over the twin's (its beat bank's, z-scores). None where
    they stray from the band SD's scales by more than ``QRS_TRUST`` in any lead. The band SD
    alone left twins' QRS 0.88-1.00 of their references' (median per lead; 13% median error
    per lead over 30 CPSC2018 records: the references' SD holds noise the twins lack). A lead
    whose reference height is NaN (estimated from other leads, ``models.leads``) keeps its band
    SD's scale."""
    ref = np.asarray(reference_qrs_mv, np.float64)
    scale = np.where(np.isfinite(ref), ref / np.maximum(np.asarray(twin_qrs, np.float64), 1e-6),
                     np.asarray(band_scale, np.float64))
    ratio = scale / np.asarray(band_scale, np.float64)
    if not ((ratio >= QRS_TRUST[0]) & (ratio <= QRS_TRUST[1])).all():
        return None
    return scale.astype(np.float32)


def to_mv(z: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Z-score samples (samples, leads) in mV. A sample at the rail (a lead-off artifact drawn
    there) stays at the rail: it stands for the ADC's limit, not for an amplitude."""
    z = np.asarray(z, np.float32)
    out = z * np.asarray(scale, np.float32)
    rail = np.abs(z) == np.float32(RAIL_MV)
    if rail.any():
        out[rail] = z[rail]
    return out


def features(state: CardiacState, site: str | None = None) -> np.ndarray:
    """The regression's inputs: age/100, sex (1 female), the statements, the recording site (an
    unknown one at the sites' mean). Unknown age or sex at the training mean is the caller's."""
    age = state.age / 100 if np.isfinite(state.age) else np.nan
    sex = float(state.sex) if state.sex in (0, 1) else np.nan
    st = [float(state.statements.get(c, 0.0)) for c in STATEMENTS]
    s = [np.nan] * len(SITES) if site is None else [float(site == k) for k in SITES]
    return np.array([age, sex, *st, *s], np.float64)


@dataclass
class AmplitudeModel:
    """log(scale) = intercept + coef . standardised features, per lead."""

    mean: np.ndarray  # (features,) fills unknowns, and centres
    std: np.ndarray
    coef: np.ndarray  # (features, leads)
    intercept: np.ndarray  # (leads,)
    report: dict

    def predict(self, state: CardiacState) -> np.ndarray:
        """Each lead's band SD in mV for a patient in ``state``."""
        f = features(state)
        f = np.where(np.isfinite(f), f, self.mean)
        return np.exp(self.intercept + ((f - self.mean) / self.std) @ self.coef).astype(np.float32)

    def to_dict(self) -> dict:
        return {"features": ["age/100", "female", *STATEMENTS, *(f"site:{s}" for s in SITES)],
                "mean": self.mean.tolist(), "std": self.std.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "report": self.report}

    @staticmethod
    def load(path: str | Path = DEFAULT_PATH) -> AmplitudeModel:
        d = json.loads(Path(path).read_text())
        return AmplitudeModel(np.array(d["mean"]), np.array(d["std"]), np.array(d["coef"]),
                              np.array(d["intercept"]), d["report"])

    @staticmethod
    def for_model(model_dir: str | Path | None) -> AmplitudeModel:
        """The model folder's own ``amplitude.json``, else the default one."""
        p = Path(model_dir) / "amplitude.json" if model_dir is not None else DEFAULT_PATH
        return AmplitudeModel.load(p if p.is_file() else DEFAULT_PATH)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    mu = y.mean(0)
    coef = np.linalg.solve(x.T @ x + lam * len(x) * np.eye(x.shape[1]), x.T @ (y - mu))
    return coef, mu


# ------------------------------------------------------------------ the mV training records

_LUDB_TERMS = {"LVH": "left ventricular hypertrophy", "CLBBB": "complete left bundle branch block",
               "CRBBB": "complete right bundle branch block", "IRBBB": "incomplete right bundle branch block",
               "LAFB": "left anterior hemiblock", "1AVB": "i degree av block", "AFIB": "atrial fibrillation",
               "PVC": "ventricular extrasystole", "PAC": "atrial extrasystole", "ISC_": "ischemia"}
_CPSC_DX = {"AF": "AFIB", "I-AVB": "1AVB", "LBBB": "CLBBB", "RBBB": "CRBBB", "PAC": "PAC", "PVC": "PVC",
            "STD": "STD_"}


def _ludb_rows(root: Path) -> list[tuple[np.ndarray, CardiacState, str]]:
    from models.data.ludb import LUDB

    db = LUDB(root)
    meta = {r["ID"].strip(): r for r in csv.DictReader(open(root / "ludb.csv", newline=""))}
    rows = []
    for rid in db.record_ids:
        m = meta.get(str(rid), {})
        text = " ".join(str(v) for v in m.values()).lower()
        # "complete ... block" is also in "incomplete ... block": match it as a word
        st = {c: 1.0 for c, t in _LUDB_TERMS.items() if re.search(rf"(?<![a-z]){re.escape(t)}", text)}
        age = re.findall(r"\d+", m.get("Age", ""))
        sex = m.get("Sex", "").strip()
        state = CardiacState(st or {"NORM": 1.0}, 70.0, float(age[0]) if age else float("nan"),
                             {"M": 0, "F": 1}.get(sex, -1))
        rows.append((lead_scales(db.signal(rid), db.fs), state, "ludb"))
    return rows


def _cpsc_rows(root: Path) -> list[tuple[np.ndarray, CardiacState, str]]:
    import wfdb

    from models.data.cpsc2018 import read_header

    rows = []
    for hea in sorted(root.glob("*.hea")):
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        h = read_header(rec.comments)
        st = {_CPSC_DX[d]: 1.0 for d in h.dx if d in _CPSC_DX}
        state = CardiacState(st or {"NORM": 1.0}, 70.0, h.age, h.sex)
        try:
            rows.append((lead_scales(rec.p_signal, rec.fs), state, "cpsc2018"))
        except AmplitudeError:  # a lead off for the whole record: not an amplitude to learn
            continue
    return rows


def fit(data_dir: Path, folds: int = 5, seed: int = 0) -> AmplitudeModel:
    """Fit on every LUDB and CPSC2018 record; the ridge penalty by ``folds``-fold
    cross-validation, whose median relative error (per lead and record) is reported beside the
    pooled median's, overall and per site."""
    rows = _ludb_rows(data_dir / "ludb") + _cpsc_rows(data_dir / "cpsc2018")
    y = np.log(np.stack([r[0] for r in rows]))
    f = np.stack([features(r[1], r[2]) for r in rows])
    mean = np.nanmean(f, 0)
    f = np.where(np.isfinite(f), f, mean)
    std = f.std(0) + 1e-9
    x = (f - mean) / std
    fold = np.random.default_rng(seed).permutation(len(rows)) % folds
    sites = np.array([r[2] for r in rows])

    def cv_error(lam: float | None) -> np.ndarray:  # |pred/true - 1| per record and lead
        err = np.zeros_like(y)
        for k in range(folds):
            tr, te = fold != k, fold == k
            if lam is None:
                pred = np.broadcast_to(np.median(y[tr], 0), y[te].shape)
            else:
                xt = x[te].copy()
                xt[:, -len(SITES):] = 0.0  # predicted at the sites' mean, as for a new patient
                coef, mu = _ridge(x[tr], y[tr], lam)
                pred = mu + xt @ coef
            err[te] = np.abs(np.exp(pred - y[te]) - 1)
        return err

    grid = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    errs = {lam: cv_error(lam) for lam in grid}
    lam = min(grid, key=lambda k: float(np.median(errs[k])))
    base = cv_error(None)

    def summary(e: np.ndarray) -> dict:
        return {"all": round(float(np.median(e)), 4),
                **{s: round(float(np.median(e[sites == s])), 4) for s in SITES}}

    coef, mu = _ridge(x, y, lam)
    # predicted at the sites' mean: the site terms move the intercept, nothing else
    report = {"records": {s: int((sites == s).sum()) for s in SITES}, "ridge_lambda": lam, "folds": folds,
              "cv_median_relative_error": summary(errs[lam]),
              "cv_median_relative_error_pooled_median": summary(base),
              "effects_percent": {c: [round(float(np.expm1(coef[2 + i, j] / std[2 + i])) * 100, 1)
                                      for j in range(y.shape[1])] for i, c in enumerate(STATEMENTS)}}
    coef[-len(SITES):] = 0.0
    return AmplitudeModel(mean, std, coef, mu, report)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    a = ap.parse_args(argv)
    m = fit(a.data)
    a.out.write_text(json.dumps(m.to_dict(), indent=1))
    print(json.dumps(m.report, indent=1))


if __name__ == "__main__":
    main()
