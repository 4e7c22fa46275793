"""What a reference with fewer than 12 leads is worth: CPSC2018's 12-lead mV records, each read
as if it had only some leads (MIT-BIH's pairs, CPSC2021's I + II, one lead), the rest estimated
by ``models.leads.LeadCompletion`` fitted on LUDB alone (CPSC2018 stays out of the fit).

For each lead set, against the full 12 leads of the same first halves: the base vector's cosine to
the 12-lead one, the reference retrieved among the patients' second halves (12 leads), and the
twin's identity (a twin in the record's own state retrieved among those second halves), as
``models.evaluation.cross_site`` measures it. And what a user of those leads sees: the twin's
median beat in the present leads retrieved among the real second halves' (in the same leads),
beside the same for the twin of the whole 12-lead reference::

    python -m models.evaluation.reduced_leads --out docs/reduced-leads.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.data.preprocess import to_model_input
from models.data.ptbxl import LEADS
from models.evaluation.conditioning import Sampling, generate
from models.evaluation.cross_site import SAMPLES, cpsc_records
from models.evaluation.metrics import retrieval
from models.evaluation.results import emit
from models.leads import (
    FS,
    LAGS,
    SUBSETS,
    LeadCompletion,
    cross_covariance,
    fit_headers,
    lead_columns,
    mv_records,
)
from models.rhythm.render import BankError, BeatBank
from models.twin import TwinModel


def cpsc_mv(root: Path, names: list[str], fs: int) -> list[tuple[np.ndarray, float]]:
    """Each named record's 12 leads in mV in the model's order, as long as ``SAMPLES`` at
    ``fs``, with the record's own rate."""
    import wfdb

    out = []
    for name in names:
        sig, f = wfdb.rdsamp(str(root / name))
        cols = lead_columns(f["sig_name"])
        x = np.nan_to_num(sig[:, [cols[i] for i in range(len(LEADS))]])
        out.append((x[: int(round(SAMPLES * f["fs"] / fs))], float(f["fs"])))
    return out


def median_beats(windows: np.ndarray, fs: int) -> np.ndarray:
    """(n, beat, leads) median beat of each window as the rhythm bank cuts it (NaN where no two
    clean beats)."""
    out = []
    for w in windows:
        try:
            out.append(np.median(BeatBank.from_windows([w], fs).normal, axis=0))
        except BankError:
            out.append(None)
    shape = next(b.shape for b in out if b is not None)
    return np.stack([np.full(shape, np.nan, np.float32) if b is None else b for b in out])


def beat_retrieval(twins: np.ndarray, real: np.ndarray, leads: list[int]) -> dict:
    """Each twin's median beat in ``leads`` retrieved among the real ones (cosine, each lead
    z-scored over the beat), over the patients both have; with the median correlation per lead."""
    ok = ~(np.isnan(twins).any((1, 2)) | np.isnan(real).any((1, 2)))

    def flat(b: np.ndarray) -> np.ndarray:
        b = b[ok][:, :, leads]
        return ((b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-6)).reshape(int(ok.sum()), -1)

    t, r = flat(twins), flat(real)
    n = len(leads)
    corr = (t * r).sum(1) / t.shape[1]  # mean over the leads of each lead's correlation
    return {**retrieval(t, r), "beat_correlation_median": round(float(np.median(corr)), 3),
            "patients_without_beats": int((~ok).sum()), "leads": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    model = TwinModel.load(a.model, "cpu")
    fs = model.meta.fs
    how = Sampling("auto", 4, 1.5, 0.0, a.seed)  # as cross_site samples

    # fitted on LUDB alone: the shipped completion has seen CPSC2018
    completion = LeadCompletion(cross_covariance(mv_records(fit_headers(a.data, ("ludb",))), LAGS), LAGS, FS)

    names, sig, states = cpsc_records(a.data / "cpsc2018", fs)
    raw = cpsc_mv(a.data / "cpsc2018", names, fs)
    half = sig.shape[1] // 2
    bases_b = np.stack([model.encode([s[half:]]) for s in sig])  # the gallery: second halves, 12 leads
    out: dict = {"model": model.meta.version, "patients": len(names), "completion_fitted_on": "LUDB (150 records)",
                 "sampling": how.__dict__, "lead_sets": {}}
    real_beats = median_beats(sig[:, half:], fs)
    full = full_beats = None
    for sub in (tuple(LEADS), *SUBSETS):
        idx = [LEADS.index(s) for s in sub]
        bases_a = []
        for x, raw_fs in raw:
            first = x[: len(x) // 2]
            if len(idx) == len(LEADS):
                ref = to_model_input(first, raw_fs, fs)
            else:
                ref = to_model_input(completion.complete(first[:, idx], raw_fs, idx), completion.fs, fs)
            bases_a.append(model.encode([ref]))
        bases_a = np.stack(bases_a)
        twins = generate(model, bases_a, states, how, how.seed)
        beats = median_beats(twins, fs)
        if full is None:
            full, full_beats = bases_a, beats
        cos = np.sum(bases_a * full, 1) / (np.linalg.norm(bases_a, axis=1) * np.linalg.norm(full, axis=1))
        out["lead_sets"][",".join(sub) if len(sub) < len(LEADS) else "all 12"] = {
            "cosine_to_12_lead_base_median": round(float(np.median(cos)), 3),
            "reference_vs_second_halves": retrieval(bases_a, bases_b),
            "twin_vs_second_halves": retrieval(np.stack([model.encode([t]) for t in twins]), bases_b),
            "twin_beat_in_these_leads": beat_retrieval(beats, real_beats, idx),
            "twin_of_12_leads_beat_in_these_leads": beat_retrieval(full_beats, real_beats, idx)}
        print(sub, out["lead_sets"][list(out["lead_sets"])[-1]], flush=True)
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
