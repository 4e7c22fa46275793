"""The evaluation on another country and device: CPSC2018 (China, 500 Hz, mV) beside the PTB-XL
held-out split (Germany), under the same judge (trained on PTB-XL only, fixed before).

For each site, at the same number of patients (CPSC2018 has 120): the judge's own AUROC on the
real records (how far the judge carries), the twins' distance to the real records in the judge's
features (FID, precision, recall; half-sample intervals), identity (a twin retrieved among the
patients' references), heart rate, and conditioning (generated in a state vs generated normal,
for that site's patients; without and with the model's contrastive guidance)::

    python -m models.evaluation.cross_site --out docs/cross-site.json
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.conditions import CardiacState
from models.data.cpsc2018 import read_header
from models.data.preprocess import to_model_input
from models.data.ptbxl import PTBXL
from models.evaluation.classifier import LABELS, label_matrix, load_classifier
from models.evaluation.conditioning import PROBE_CONDITIONS, Sampling, conditioning, generate
from models.evaluation.metrics import auroc, bootstrap, fid, prdc, retrieval
from models.evaluation.report import _centre, _hr_errors, _pca, _states
from models.evaluation.results import emit
from models.rpeaks import label_heart_rate
from models.twin import TwinModel

SAMPLES = 2496  # the first 10 s, as the PTB-XL evaluation takes them
# CPSC2018's diagnoses as the model's statements (STE has none: sinus rhythm only)
CPSC_STATEMENTS = {"Normal": {"NORM": 1.0, "SR": 1.0}, "AF": {"AFIB": 1.0}, "I-AVB": {"1AVB": 1.0, "SR": 1.0},
                   "LBBB": {"CLBBB": 1.0, "SR": 1.0}, "RBBB": {"CRBBB": 1.0, "SR": 1.0},
                   "PAC": {"PAC": 1.0, "SR": 1.0}, "PVC": {"PVC": 1.0, "SR": 1.0}, "STD": {"STD_": 1.0, "SR": 1.0},
                   "STE": {"SR": 1.0}}
CPSC_LABELS = ("NORM", "AFIB", "1AVB", "CLBBB", "CRBBB", "PAC", "PVC", "STD_")


def cpsc_records(root: Path, fs: int) -> tuple[list[str], np.ndarray, list[CardiacState]]:
    """(record names, (n, SAMPLES, 12) model input, states from the diagnoses) of every CPSC2018
    record of at least 10 s."""
    import wfdb

    names, sigs, states = [], [], []
    for hea in sorted(Path(root).glob("*.hea")):
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        x = to_model_input(rec.p_signal, rec.fs, fs)
        if len(x) < SAMPLES:
            continue
        h = read_header(rec.comments)
        st: dict[str, float] = {}
        for d in h.dx:
            st.update(CPSC_STATEMENTS.get(d, {}))
        if "AFIB" in st:
            st.pop("SR", None)
        states.append(CardiacState(st or {"SR": 1.0}, label_heart_rate(x[:SAMPLES], fs), h.age, h.sex))
        names.append(hea.stem)
        sigs.append(x[:SAMPLES].astype(np.float32))
    return names, np.stack(sigs), states


def site_report(model: TwinModel, judge, project, sig: np.ndarray, states: list[CardiacState],
                how: Sampling, reps: int) -> dict:
    """Twins of one site's patients (base vector from each record's first half, in the record's
    own state) against the same records' real windows."""
    w, fs = model.meta.window, model.meta.fs
    half = sig.shape[1] // 2
    bases_a = np.stack([model.encode([s[:half]]) for s in sig])
    bases_b = np.stack([model.encode([s[half:]]) for s in sig])
    twins = generate(model, bases_a, states, how, how.seed)
    real = _centre(sig, w)
    f_real, f_twin = project(judge.predict(real)[1]), project(judge.predict(twins)[1])
    return {"patients": len(sig),
            "twins_vs_real": {"fid": bootstrap(fid, f_real, f_twin, reps, how.seed)["value"],
                              **bootstrap(prdc, f_real, f_twin, reps, how.seed)},
            "identity": {"references_half_vs_half": retrieval(bases_a, bases_b),
                         "twin_vs_references": retrieval(np.stack([model.encode([t]) for t in twins]), bases_b)},
            "heart_rate": _hr_errors(twins, [s.heart_rate for s in states], fs),
            "conditioning": conditioning(model, judge, bases_a[:64], how, PROBE_CONDITIONS, bases_b[:64]),
            "conditioning_contrast": conditioning(model, judge, bases_a[:64], replace(how, contrast=None),
                                                  PROBE_CONDITIONS, bases_b[:64]),
            "_features": f_real}


def judge_on_real(judge, windows: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict:
    """The judge's AUROC per label on real windows: how far it carries to the site."""
    p, _ = judge.predict(windows)
    return {c: {"auroc": auroc(labels[:, i], p[:, LABELS.index(c)]), "positives": int(labels[:, i].sum())}
            for i, c in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "default")
    ap.add_argument("--reps", type=int, default=100, help="half-samples for the intervals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    model = TwinModel.load(a.model, "cpu")
    judge, info = load_classifier(a.model)
    fs, w = model.meta.fs, model.meta.window
    how = Sampling("auto", 4, 1.5, 0.0, a.seed)  # as the service samples

    db = PTBXL(a.data / "ptbxl-subset", fs)
    train_ids, held_ids = db.split()
    project = _pca(judge.predict(_centre(np.stack([db.record(i).signal[:SAMPLES] for i in train_ids]), w))[1], 32)

    names, c_sig, c_states = cpsc_records(a.data / "cpsc2018", fs)
    n = len(names)  # both sites at this many patients: FID depends on the sample size
    held = list(np.random.default_rng(a.seed).permutation(held_ids)[:n])
    p_sig = np.stack([db.record(i).signal[:SAMPLES] for i in held])
    p_states = _states(db, held, p_sig)

    y_c = np.array([[float(s.statements.get(c, 0.0) >= 0.5) for c in CPSC_LABELS] for s in c_states])
    y_p = label_matrix(db, held)[:, [LABELS.index(c) for c in CPSC_LABELS]]
    out = {"model": model.meta.version, "judge_trained_on": "PTB-XL training split", "sampling": how.__dict__,
           "ptbxl_heldout": site_report(model, judge, project, p_sig, p_states, how, a.reps),
           "cpsc2018": site_report(model, judge, project, c_sig, c_states, how, a.reps)}
    out["ptbxl_heldout"]["judge_on_real"] = judge_on_real(judge, _centre(p_sig, w), y_p, CPSC_LABELS)
    out["cpsc2018"]["judge_on_real"] = judge_on_real(judge, _centre(c_sig, w), y_c, CPSC_LABELS)
    f_p, f_c = out["ptbxl_heldout"].pop("_features"), out["cpsc2018"].pop("_features")
    out["site_gap"] = {"fid": bootstrap(fid, f_p, f_c, a.reps, a.seed)["value"], **bootstrap(prdc, f_p, f_c, a.reps, a.seed)}
    out["cpsc2018"]["records"] = names
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
