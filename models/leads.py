"""A reference's leads by name, and the leads it lacks.

A WFDB record names its signals: LUDB writes ``avr``, MIT-BIH ``MLII`` (modified lead II, on the
chest), PTB's records add the Frank leads ``vx, vy, vz``. ``lead_columns`` finds the model's 12
leads among them by name, so a record is read in the model's order whatever its own, and leads
the model has no use for are left out.

A reference with only some of the 12 (MIT-BIH's MLII + V1, CPSC2021's I + II, a Holter's) is
completed by ``LeadCompletion``: each missing lead's least-squares estimate from the present ones
over +-40 ms, the linear estimate of a Gaussian process whose lead-by-lead cross-covariance was
measured on the 12-lead mV records of LUDB and CPSC2018 (``python -m models.leads``, which writes
the cross-validated per-lead correlation beside it). Lags added a little over the present instant
alone (V2 from I + II: r 0.12 -> 0.51; 5-fold, 270 records); +-100 ms added nothing more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.data.preprocess import band, resample
from models.data.ptbxl import LEADS

DEFAULT_PATH = Path(__file__).parent / "default" / "leads.json"
FS = 250  # the rate the cross-covariance is measured at (the model's)
LAGS = tuple(range(-10, 11, 2))  # samples at FS: -40..+40 ms every 8 ms
# a record's own names for the model's leads (compared upper-cased): MIT-BIH's modified limb leads
ALIASES = {"MLI": "I", "MLII": "II", "MLIII": "III"}


class LeadError(ValueError):
    """A reference whose leads cannot be read as the model's."""


def lead_columns(names: list[str] | tuple[str, ...], leads: tuple[str, ...] = LEADS) -> dict[int, int]:
    """Which column of a record holds each of the model's leads, by name.

    Args:
        names: the record's signal names, in its column order.
        leads: the model's leads.
    Returns:
        {model lead index: record column} for the model's leads the record has.
    Raises:
        LeadError: a lead named twice.
    """
    want = {name.upper(): i for i, name in enumerate(leads)}
    found: dict[int, int] = {}
    for col, name in enumerate(names):
        key = str(name).strip().upper()
        i = want.get(ALIASES.get(key, key))
        if i is None:
            continue
        if i in found:
            raise LeadError(f"lead {leads[i]} is named twice ({names[found[i]]!r} and {name!r})")
        found[i] = col
    return found


class LeadCompletion:
    """Estimates a record's missing leads from its present ones.

    Args:
        cov: (2K + 1, leads, leads) cross-covariance in mV^2, K = len(lags) - 1: ``cov[k][a, b]``
            is the mean of x_a(t) x_b(t + (k - K) * step) over the band-passed records.
        lags: the sample offsets an estimate reads, at ``fs``.
        fs: the rate ``lags`` count at.
        report: how good the estimates were when fitted (cross-validated).
    """

    def __init__(self, cov: np.ndarray, lags: tuple[int, ...] = LAGS, fs: int = FS, report: dict | None = None) -> None:
        self.cov, self.lags, self.fs, self.report = np.asarray(cov, np.float64), tuple(lags), fs, report or {}
        self.step = lags[1] - lags[0] if len(lags) > 1 else 1

    def complete(self, x_mv: np.ndarray, fs: float, present: list[int]) -> np.ndarray:
        """The whole 12-lead record from its present leads.

        Args:
            x_mv: (samples, len(present)) in mV, the present leads in ``present``'s order.
            fs: its rate.
            present: the model lead index of each column.
        Returns:
            (samples', leads) in mV at ``self.fs``, 0.5-40 Hz: the present leads as given (band-
            passed), the others estimated.
        """
        x = band(resample(np.asarray(x_mv, np.float64), fs, self.fs), self.fs)
        n_leads = self.cov.shape[1]
        out = np.zeros((len(x), n_leads))
        out[:, present] = x
        missing = [j for j in range(n_leads) if j not in present]
        if missing:
            out[:, missing] = self._lagged(x) @ self._weights(tuple(present), missing)
        return out

    def _lagged(self, x: np.ndarray) -> np.ndarray:
        """(samples, lags * present): each lead at each lag, zero beyond the ends."""
        m = max(abs(d) for d in self.lags)
        p = np.pad(x, ((m, m), (0, 0)))
        return np.concatenate([p[m + d:m + d + len(x)] for d in self.lags], 1)

    def _weights(self, present: tuple[int, ...], missing: list[int]) -> np.ndarray:
        """Least-squares weights (lags * present, missing) from the cross-covariance."""
        mid = len(self.cov) // 2

        def c(l1: int, l2: int, a: list[int], b: list[int]) -> np.ndarray:  # E[x_a(t+l1) x_b(t+l2)]
            return self.cov[mid + (l2 - l1) // self.step][np.ix_(a, b)]

        p = list(present)
        s = np.block([[c(l1, l2, p, p) for l2 in self.lags] for l1 in self.lags])
        s += np.eye(len(s)) * 1e-4 * np.trace(s) / len(s)  # a lead present twice over (I, II, III) is singular
        t = np.concatenate([c(l1, 0, p, missing) for l1 in self.lags], 0)
        return np.linalg.solve(s, t)

    def to_dict(self) -> dict:
        return {"fs": self.fs, "lags": list(self.lags), "leads": list(LEADS),
                "cov": [[[float(f"{v:.6g}") for v in row] for row in m] for m in self.cov], "report": self.report}

    @staticmethod
    def load(path: str | Path = DEFAULT_PATH) -> LeadCompletion:
        d = json.loads(Path(path).read_text())
        return LeadCompletion(np.array(d["cov"]), tuple(d["lags"]), d["fs"], d["report"])

    @staticmethod
    def for_model(model_dir: str | Path | None) -> LeadCompletion:
        """The model folder's own ``leads.json``, else the default one."""
        p = Path(model_dir) / "leads.json" if model_dir is not None else DEFAULT_PATH
        return LeadCompletion.load(p if p.is_file() else DEFAULT_PATH)


def fit_headers(data_dir: Path, sites: tuple[str, ...] = ("ludb", "cpsc2018")) -> list[Path]:
    """The 12-lead mV records the cross-covariance is measured on: LUDB's and CPSC2018's."""
    where = {"ludb": data_dir / "ludb" / "data", "cpsc2018": data_dir / "cpsc2018"}
    return [h for s in sites for h in sorted(where[s].glob("*.hea"))]


def mv_records(headers: list[Path]) -> list[np.ndarray]:
    """Each 12-lead record's first 30 s at FS in the model's lead order, band-passed, in mV, the
    first and last second cut (the filter's edges)."""
    import wfdb

    out = []
    for hea in headers:
        sig, f = wfdb.rdsamp(str(hea.with_suffix("")))
        cols = lead_columns(f["sig_name"])
        if len(cols) != len(LEADS):
            continue
        x = np.nan_to_num(sig[: int(30 * f["fs"])][:, [cols[i] for i in range(len(LEADS))]])
        out.append(band(resample(x, f["fs"], FS), FS)[FS:-FS])
    return out


def cross_covariance(records: list[np.ndarray], lags: tuple[int, ...]) -> np.ndarray:
    """Mean over records (each alike) of E[x_a(t) x_b(t + d)] for every lag difference d."""
    step, span = lags[1] - lags[0], lags[-1] - lags[0]
    diffs = range(-span, span + 1, step)
    cov = np.zeros((len(diffs), records[0].shape[1], records[0].shape[1]))
    for x in records:
        n = len(x)
        for k, d in enumerate(diffs):
            a, b = (x[: n - d], x[d:]) if d >= 0 else (x[-d:], x[: n + d])
            cov[k] += a.T @ b / len(a)
    return cov / len(records)


# what the report measures: MIT-BIH's pairs, CPSC2021's, one lead, and three
SUBSETS = (("II",), ("I",), ("I", "II"), ("II", "V1"), ("II", "V2"), ("II", "V5"), ("V2", "V5"), ("I", "II", "V1"))


def fit(data_dir: Path, folds: int = 5) -> LeadCompletion:
    """The cross-covariance of every LUDB and CPSC2018 record, and each subset's
    ``folds``-fold cross-validated median correlation and band-SD ratio per lead."""
    recs = mv_records(fit_headers(data_dir))
    fold = np.arange(len(recs)) % folds
    parts = [LeadCompletion(cross_covariance([r for r, f in zip(recs, fold, strict=True) if f != k], LAGS))
             for k in range(folds)]
    report: dict = {"records": len(recs), "folds": folds, "subsets": {}}
    for sub in SUBSETS:
        idx = [LEADS.index(s) for s in sub]
        r, sd = [], []
        for x, k in zip(recs, fold, strict=True):
            y = parts[k].complete(x[:, idx], FS, idx)[FS:-FS]
            t = band(x, FS)[FS:-FS]
            r.append([np.corrcoef(y[:, j], t[:, j])[0, 1] for j in range(len(LEADS))])
            sd.append(y.std(0) / t.std(0))
        miss = [j for j in range(len(LEADS)) if j not in idx]
        r_, sd_ = np.array(r), np.array(sd)
        report["subsets"][",".join(sub)] = {
            "r": dict(zip(LEADS, np.round(np.median(r_, 0), 3).tolist(), strict=True)),
            "missing_r_median": round(float(np.median(r_[:, miss])), 3),
            "missing_sd_ratio_median": round(float(np.median(sd_[:, miss])), 3),
            "missing_sd_error_median": round(float(np.median(np.abs(sd_[:, miss] - 1))), 3)}
    return LeadCompletion(cross_covariance(recs, LAGS), LAGS, FS, report)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    a = ap.parse_args(argv)
    m = fit(a.data_dir)
    a.out.write_text(json.dumps(m.to_dict()) + "\n")
    for name, s in m.report["subsets"].items():
        print(f"{name:10s} missing leads: median r {s['missing_r_median']:.2f}, band SD {s['missing_sd_ratio_median']:.2f} "
              f"of the real (median error {s['missing_sd_error_median']:.0%})")


if __name__ == "__main__":
    main()
