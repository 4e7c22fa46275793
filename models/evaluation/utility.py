"""Utility: does adding twins to a small real training set make a better diagnosis classifier?

The ECGTwin paper's augmentation, personalised: every patient of a small real training set gets
twins in *other* states (statements and heart rate of other training records), labelled with the
requested state. A classifier trained on real only and one trained on real + twins, same seeds
and steps, are scored on the held-out real patients. The difference of macro AUROC is reported
with a paired bootstrap interval over held-out records (each arm's predictions averaged over
the seeds), and per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.conditions import CardiacState
from models.data.ptbxl import PTBXL
from models.evaluation.classifier import code_labels, train_classifier
from models.evaluation.metrics import auroc
from models.twin import TwinModel


@dataclass(frozen=True)
class UtilityConfig:
    patients: int = 150  # the small real training set
    twins_per_patient: int = 2
    seeds: int = 3
    classifier_steps: int = 800
    classifier_width: int = 32
    bootstrap_reps: int = 500


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    vals = [auroc(y[:, j], p[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    return float(np.mean(vals)) if vals else float("nan")


def utility_experiment(model: TwinModel, db: PTBXL, train_ids: list[int], train_sig: np.ndarray,
                       train_states: list[CardiacState], test_windows: np.ndarray, test_labels: np.ndarray,
                       cfg: UtilityConfig, steps: int, sampler: str, guidance: float, seed: int = 0,
                       contrast: float | None = 0.0) -> dict:
    """``train_*``: the training split's records (the small set is drawn from them, the twins'
    states from all of them); ``test_*``: held-out windows and their labels; ``contrast``: the
    twins' contrastive guidance (``TwinModel.generate_latent``)."""
    rng = np.random.default_rng(seed)
    w = model.meta.window
    pick = rng.choice(len(train_ids), min(cfg.patients, len(train_ids)), replace=False)
    real = [train_sig[i] for i in pick]
    y_real = np.stack([code_labels(db, db.df.at[train_ids[i], "scp_codes"]) for i in pick])
    # twins: each small-set patient in the states of other (random) training records
    half = train_sig.shape[1] // 2
    bases = np.stack([model.encode([train_sig[i][:half]]) for i in pick])
    reps = np.repeat(np.arange(len(pick)), cfg.twins_per_patient)
    others = rng.integers(0, len(train_states), len(reps))
    states = [train_states[j] for j in others]
    twins = np.concatenate([model.generate(bases[reps[i:i + 64]], states[i:i + 64], steps, seed + i, sampler, guidance,
                                           contrast)
                            for i in range(0, len(reps), 64)])
    y_twins = np.stack([code_labels(db, {c: 100.0 for c in s.statements}) for s in states])
    arms = {"real_only": (real, y_real),
            "real_plus_twins": (real + list(twins), np.concatenate([y_real, y_twins]))}
    preds: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    per_seed: dict[str, list[float]] = {a: [] for a in arms}
    for s in range(cfg.seeds):
        for arm, (sig, y) in arms.items():
            clf, _ = train_classifier(sig, y, w, cfg.classifier_steps, width=cfg.classifier_width, seed=seed + s)
            p = clf.predict(test_windows)[0]
            preds[arm].append(p)
            per_seed[arm].append(macro_auroc(test_labels, p))
    p_real, p_aug = np.mean(preds["real_only"], 0), np.mean(preds["real_plus_twins"], 0)
    diffs = []
    n = len(test_labels)
    for _ in range(cfg.bootstrap_reps):
        idx = rng.integers(0, n, n)
        diffs.append(macro_auroc(test_labels[idx], p_aug[idx]) - macro_auroc(test_labels[idx], p_real[idx]))
    diffs = np.array([d for d in diffs if np.isfinite(d)])
    base, aug = macro_auroc(test_labels, p_real), macro_auroc(test_labels, p_aug)
    return {"real_patients": len(pick), "twins": len(twins), "test_records": n, "seeds": cfg.seeds,
            "macro_auroc_real_only": base, "macro_auroc_real_plus_twins": aug,
            "difference": aug - base,
            "difference_95ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
            "relative_difference": (aug - base) / base,
            "per_seed_real_only": per_seed["real_only"], "per_seed_real_plus_twins": per_seed["real_plus_twins"]}


def main(argv: list[str] | None = None) -> int:
    """The experiment on its own, as the full evaluation runs it (the serving sampler), with the
    twins' contrastive guidance off or the model's own."""
    import argparse
    from dataclasses import replace
    from pathlib import Path

    from models.evaluation.classifier import label_matrix
    from models.evaluation.report import EvalConfig, _centre, _split_records, _states
    from models.evaluation.results import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data"
                    / "ptbxl-subset")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "default")
    ap.add_argument("--contrast", default="0", help="'model': the model's weights per statement; or a weight")
    ap.add_argument("--seeds", type=int, default=UtilityConfig.seeds)
    ap.add_argument("--twins-per-patient", type=int, default=UtilityConfig.twins_per_patient)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    model = TwinModel.load(a.model, "cpu")
    cfg = EvalConfig()
    cfg = replace(cfg, sampler=model.resolve_sampler(cfg.sampler, cfg.steps),
                  utility=replace(cfg.utility, seeds=a.seeds, twins_per_patient=a.twins_per_patient))
    db = PTBXL(a.data, model.meta.fs)
    train_ids, held_ids, tr_sig, he_sig = _split_records(db, cfg, np.random.default_rng(cfg.seed))
    res = utility_experiment(model, db, train_ids, tr_sig, _states(db, train_ids, tr_sig),
                             _centre(he_sig, model.meta.window), label_matrix(db, held_ids), cfg.utility, cfg.steps,
                             cfg.sampler, cfg.guidance, cfg.seed, None if a.contrast == "model" else float(a.contrast))
    res["contrast"] = a.contrast
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
