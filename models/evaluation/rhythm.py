"""The rhythm layer measured against real beat annotations, and R-peak detectors measured the
way ANSI/AAMI EC57 does.

``rr_statistics``: RR dynamics per rhythm from MIT-BIH's reference annotations (sinus SDNN and
RMSSD over 5 min, AF RR irregularity over 1 min, PVC coupling and compensation) and the same
figures of the rhythm programs, side by side. ``detector_scores``: QRS sensitivity and positive
predictivity of detectors against MIT-BIH's reference beats, matched with
``wfdb.processing.compare_annotations`` within 150 ms (EC57's window).

    python -m models.evaluation.rhythm --data ../shared/data --out docs/rhythm.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import wfdb

from models.conditions import CardiacState
from models.evaluation.results import emit
from models.rhythm import BEAT_SYMBOLS, MIT_KIND, BeatSchedule, Rhythm


def _rhythm_runs(ann) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(aux rhythm, beat samples, beat symbols) for each stretch between rhythm changes."""
    runs, current, samples, symbols = [], None, [], []
    for s, sym, aux in zip(ann.sample, ann.symbol, ann.aux_note, strict=True):
        if sym == "+" and aux:
            if current is not None:
                runs.append((current, np.array(samples), np.array(symbols)))
            current, samples, symbols = aux.strip("\x00"), [], []
        elif sym in BEAT_SYMBOLS and current is not None:
            samples.append(s)
            symbols.append(sym)
    if current is not None:
        runs.append((current, np.array(samples), np.array(symbols)))
    return runs


def _window_stats(times: np.ndarray, kinds: np.ndarray, rhythm: str, window: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sdnn_ms": [], "rmssd_ms": [], "cv": [], "coupling": [], "compensation": []}
    if len(times) < 3:
        return out
    rr = np.diff(times)
    normal_pair = (kinds[:-1] == "N") & (kinds[1:] == "N")
    if rhythm in ("(N", "(AFIB"):
        for t0 in np.arange(times[0], times[-1] - window, window):
            sel = normal_pair & (times[:-1] >= t0) & (times[1:] < t0 + window) & (rr > 0.25) & (rr < 2.5)
            x = rr[sel]
            if len(x) < window / 2.5:
                continue
            if rhythm == "(N":
                out["sdnn_ms"].append(1000 * float(np.std(x)))
                out["rmssd_ms"].append(1000 * float(np.sqrt(np.mean(np.diff(x) ** 2))))
            else:
                out["cv"].append(float(np.std(x) / np.mean(x)))
    if rhythm == "(N":  # isolated PVCs in sinus: N N V N
        for i in range(2, len(kinds) - 1):
            if kinds[i] == "V" and kinds[i - 1] == "N" and kinds[i - 2] == "N" and kinds[i + 1] == "N":
                base = rr[i - 2]
                if 0.3 < base < 2.0:
                    out["coupling"].append(float(rr[i - 1] / base))
                    out["compensation"].append(float((rr[i - 1] + rr[i]) / (2 * base)))
    return out


def _kinds(symbols: np.ndarray) -> np.ndarray:
    return np.array([MIT_KIND.get(s, "Q") for s in symbols])


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    q = np.percentile(values, [10, 50, 90])
    return {"n": len(values), "p10": round(float(q[0]), 3), "median": round(float(q[1]), 3),
            "p90": round(float(q[2]), 3)}


def rr_statistics(mitdb: Path, seconds: float = 1800.0, label: str = "mitdb") -> dict:
    """RR dynamics of a database's annotated rhythms (MIT-BIH's, or any with its codes:
    CPSC 2021's) and of the programs asked for the same, under keys ``label`` and "programs"."""
    real: dict[str, list[float]] = {"sdnn_ms": [], "rmssd_ms": [], "cv": [], "coupling": [], "compensation": []}
    rates = []
    for hea in sorted(Path(mitdb).glob("*.hea")):
        ann = wfdb.rdann(str(hea.with_suffix("")), "atr")
        for rhythm, samples, symbols in _rhythm_runs(ann):
            times = samples / ann.fs
            window = 300.0 if rhythm == "(N" else 60.0
            for k, v in _window_stats(times, _kinds(symbols), rhythm, window).items():
                real[k] += v
            if rhythm == "(N" and len(times) > 10:
                rates.append(60.0 / float(np.median(np.diff(times))))
    made: dict[str, list[float]] = {k: [] for k in real}
    for seed, rate in enumerate(np.percentile(rates, np.linspace(5, 95, 12)) if rates else [70.0]):
        rate = float(np.clip(rate, 30, 180))
        for rhythm, aux in ((Rhythm("sinus", rate=rate), "(N"), (Rhythm("afib", rate=rate + 30), "(AFIB"),
                            (Rhythm("pvc", rate=rate, probability=0.1), "(N")):
            beats = BeatSchedule(rhythm, 0.0, seed).beats(seconds)
            times = np.array([b.time for b in beats])
            kinds = np.array([b.kind for b in beats])
            stats = _window_stats(times, kinds, aux, 300.0 if aux == "(N" else 60.0)
            for k, v in stats.items():
                if rhythm.name == "pvc" and k in ("sdnn_ms", "rmssd_ms"):
                    continue  # sinus variability is the sinus program's
                made[k] += v
    return {k: {label: _summary(real[k]), "programs": _summary(made[k])} for k in real}


def _detectors() -> dict:
    from models.rpeaks import detect_r_peaks
    from models.stress.detectors import PythonDetector, detector

    return {"xqrs (wfdb)": detector("xqrs"), "neurokit2 neurokit": detector("neurokit2"),
            "neurokit2 pantompkins1985": detector("pantompkins"),
            "models.rpeaks (ours)": PythonDetector("models.rpeaks", detect_r_peaks)}


def _mlii(rec) -> np.ndarray:
    """A MIT-BIH record's lead MLII in mV (its first lead where it has none)."""
    return rec.p_signal[:, rec.sig_name.index("MLII") if "MLII" in rec.sig_name else 0]


def _beat_samples(ann) -> np.ndarray:
    """The cardiologists' beats of an annotation (samples), rhythm changes and notes left out."""
    return np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS])


def _mitdb_mlii(mitdb: Path, seconds: float):
    """(lead MLII in mV, fs, reference beat samples) of each MIT-BIH record's first ``seconds``."""
    for hea in sorted(Path(mitdb).glob("*.hea")):
        rec = wfdb.rdrecord(str(hea.with_suffix("")), sampto=int(360 * seconds))
        fs = float(rec.fs)
        yield _mlii(rec), fs, _beat_samples(wfdb.rdann(str(hea.with_suffix("")), "atr", sampto=int(fs * seconds)))


def detector_scores(mitdb: Path, seconds: float = 300.0) -> dict:
    """Gross QRS Se and +P of each detector over the records' first ``seconds`` (lead MLII),
    EC57 matching within 150 ms, skipping the first 5 min's learning period is not done: the
    figures are for detectors started cold, as a monitor's is after a lead change."""
    from wfdb import processing

    detectors = _detectors()
    totals = {name: [0, 0, 0] for name in detectors}  # true positives, reference beats, detections
    for x, fs, ref in _mitdb_mlii(mitdb, seconds):
        for name, detect in detectors.items():
            found = np.asarray(detect(x, fs), int)
            cmp = processing.compare_annotations(ref, found, int(0.15 * fs))
            totals[name][0] += cmp.tp
            totals[name][1] += len(ref)
            totals[name][2] += len(found)
    return {name: {"se": round(tp / max(1, nref), 4), "ppv": round(tp / max(1, nfound), 4), "reference_beats": nref}
            for name, (tp, nref, nfound) in totals.items()}


BEAT_RHYTHMS = (Rhythm("sinus", rate=70), Rhythm("afib", rate=110), Rhythm("pvc", pattern="bigeminy", rate=70),
                Rhythm("vt", rate=180))
RATES = (30, 40, 50, 60, 80, 100, 120, 150, 180, 200, 220, 240)  # sinus to 180, a regular SVT beyond


def _rate_rhythm(rate: float) -> Rhythm:
    name = "svt" if rate > 180 else "sinus_brady" if rate < 60 else "sinus_tachy" if rate > 100 else "sinus"
    return Rhythm(name, rate=float(rate))


def _beat_scores(x: np.ndarray, truth: np.ndarray, seconds: float, fs: int, dets: dict) -> dict:
    """Each detector's EC57 beat matching on lead II of a rendered twin against its scheduled
    beats (``truth``, seconds), the first 2 s and the last 0.3 s left out."""
    from models.stress.scoring import score_beats

    # the first 2 s are the detectors' learning (EC57 skips 5 min), the last beat may be cut
    ref = np.round(truth[(truth >= 2.0) & (truth < seconds - 0.3)] * fs).astype(int)
    w = int(0.15 * fs)  # detections of the beats left out are not false ones
    out = {}
    for name, det in dets.items():
        found = det(x[:, 1], fs)
        out[name] = score_beats(ref, found[(found >= ref[0] - w) & (found <= ref[-1] + w)], fs)
    return out


def _render(track, seconds: float, fs: int) -> tuple[np.ndarray, np.ndarray]:
    x, beats, _ = track.window(0.0, int(seconds * fs))
    return x, np.array([b.time for b in beats])


def held_out_banks(model, data: Path, patients: int = 10, contrast: bool = False):
    """(ecg id, beat bank, state) of the first ``patients`` held-out PTB-XL patients (folds 9-10),
    each in its own morphology (its statements, at the bank's rate; ``contrast``: with the model's
    contrastive guidance); the i-th bank from seed 1000 + i."""
    from models.data.ptbxl import PTBXL
    from models.rhythm.morphology import bank_for

    db = PTBXL(Path(data) / "ptbxl-subset")
    for i, rid in enumerate(db.split()[1][:patients]):
        rec = db.record(rid)
        state = CardiacState.from_scp(rec.scp_codes, 75.0, rec.age, rec.sex, model.meta.vocab)
        yield rid, bank_for(model, model.encode([rec.signal]), state, seed=1000 + i, contrast=contrast), state


def twin_scores(model, data: Path, patients: int = 10, seconds: float = 60.0, contrast: bool = False) -> dict:
    """Twins of held-out PTB-XL patients drawn on schedules, read back by detectors we did not write.

    Returns:
        ``beats``: per rhythm of ``BEAT_RHYTHMS`` and detector, gross QRS Se, +P and median
        timing error against the schedule (EC57 matching, lead II, ``seconds`` per patient
        less the first 2 s);
        ``rates``: per requested rate of ``RATES`` and detector, the share of 10 s windows whose
        rate (from the detected beats) is within 1 bpm of the request.
    """
    from models.rhythm.render import BeatRenderer
    from models.rhythm.track import RhythmTrack
    from models.stress.detectors import detector
    from models.stress.scoring import gross

    fs = model.meta.fs
    dets = {name: detector(name) for name in ("xqrs", "neurokit2", "pantompkins")}
    scores: dict[str, dict[str, list]] = {}
    windows: dict[int, dict[str, list[bool]]] = {r: {d: [] for d in dets} for r in RATES}
    banks = [bank for _, bank, _ in held_out_banks(model, data, patients, contrast)]
    for i, bank in enumerate(banks):
        for rhythm in BEAT_RHYTHMS:
            x, truth = _render(RhythmTrack(BeatSchedule(rhythm, 0.0, i), BeatRenderer(bank, i)), seconds, fs)
            key = rhythm.pattern if rhythm.pattern else rhythm.name
            for name, score in _beat_scores(x, truth, seconds, fs, dets).items():
                scores.setdefault(key, {}).setdefault(name, []).append(score)
        for rate in RATES:
            x, _ = _render(RhythmTrack(BeatSchedule(_rate_rhythm(rate), 0.0, i), BeatRenderer(bank, i)), seconds, fs)
            for name, det in dets.items():
                found = det(x[:, 1], fs) / fs
                for t0 in np.arange(5.0, seconds - 9.99, 10.0):  # the first 5 s: detectors learning
                    inside = found[(found >= t0) & (found < t0 + 10.0)]
                    ok = len(inside) > 1 and abs(60.0 / np.diff(inside).mean() - rate) <= 1.0
                    windows[rate][name].append(bool(ok))
    return {"patients": len(banks), "seconds": seconds,
            "beats": {k: {d: gross(v).to_dict() for d, v in by.items()} for k, by in scores.items()},
            "rates": {str(r): {d: round(float(np.mean(v)), 4) for d, v in by.items()} for r, by in windows.items()},
            "rates_all": {d: round(float(np.mean([w for r in RATES for w in windows[r][d]])), 4) for d in dets}}


NEW_MORPHOLOGY = ("CLBBB", "CRBBB", "LVH", "IMI", "ASMI", "STD_", "PVC", "1AVB")


def new_morphology_scores(model, data: Path, patients: int = 10, seconds: float = 60.0,
                          statements: tuple[str, ...] = NEW_MORPHOLOGY, rates: tuple[float, ...] = (70.0,),
                          registered: str = "normal") -> dict:
    """Held-out PTB-XL patients asked for a morphology they were not registered with, as the
    service draws it by default (with the model's contrastive guidance) and without: in the
    rhythm each of ``rates`` implies (sinus at 70, brady- or tachycardia), QRS Se and +P per
    detector (lead II, EC57 matching, ``seconds`` less the first 2 s).

    Args:
        registered: ``"normal"`` (NORM, no weighted statement) or ``"abnormal"`` (some weighted
            statement; a patient registered with the statement asked for is left out of it).

    Returns:
        statement -> "guided" | "unguided" -> detector -> gross Se/+P over the patients (per rate
        under "at_<rate>" where there are several), and how many patients' banks could not be
        cut with any of ``bank_seeds`` (their stream would draw that state without beats).
    """
    from models.data.ptbxl import PTBXL
    from models.rhythm.morphology import bank_for, rhythm_of
    from models.rhythm.render import BankError, BeatRenderer
    from models.rhythm.track import RhythmTrack
    from models.stress.detectors import detector
    from models.stress.scoring import gross

    if registered not in ("normal", "abnormal"):
        raise ValueError(f"registered: normal or abnormal, not {registered!r}")
    fs = model.meta.fs
    dets = {name: detector(name) for name in ("xqrs", "neurokit2", "pantompkins")}
    db = PTBXL(Path(data) / "ptbxl-subset")
    picked = []  # (base vector, the statements it was registered with)
    for rid in db.split()[1]:
        rec = db.record(rid)
        st = CardiacState.from_scp(rec.scp_codes, 75.0, rec.age, rec.sex, model.meta.vocab)
        weighted = model.meta.contrast_for(st) > 0
        if (not weighted and st.statements.get("NORM", 0) >= 0.5) if registered == "normal" else weighted:
            picked.append((model.encode([rec.signal]), {c for c, v in st.statements.items() if v >= 0.5}))
        if len(picked) == patients:
            break
    rhythms = {rate: rhythm_of(CardiacState({"SR": 1.0}, rate)) for rate in rates}
    out: dict = {"patients": len(picked), "registered": registered, "seconds": seconds,
                 "rhythms": {f"{r:g}": rh.to_dict() for r, rh in rhythms.items()}}
    for code in statements:
        state = CardiacState({"SR": 1.0, code: 1.0}, 70.0)
        for how, guided in (("guided", True), ("unguided", False)):
            scores: dict[float, dict[str, list]] = {r: {d: [] for d in dets} for r in rates}
            failed = asked = 0
            for i, (base, own) in enumerate(picked):
                if code in own:
                    continue
                asked += 1
                try:
                    bank = bank_for(model, base, state, seed=2000 + i, contrast=guided)
                except BankError:  # the stream would draw the model's windows, without beats
                    failed += 1
                    continue
                for rate, rhythm in rhythms.items():
                    x, truth = _render(RhythmTrack(BeatSchedule(rhythm, 0.0, i), BeatRenderer(bank, i)), seconds, fs)
                    for name, score in _beat_scores(x, truth, seconds, fs, dets).items():
                        scores[rate][name].append(score)
            per = {f"at_{r:g}": {d: gross(v).to_dict() for d, v in sc.items() if v} for r, sc in scores.items()}
            row = {"patients": asked, "banks_failed": failed}
            out.setdefault(code, {})[how] = {**row, **per[f"at_{rates[0]:g}"]} if len(rates) == 1 else {**row, **per}
    return out


def mitdb_timing(mitdb: Path, seconds: float = 300.0) -> dict:
    """The same detectors on MIT-BIH's reference beats (lead MLII): gross Se, +P and median
    timing error, to set beside ``twin_scores``."""
    from models.stress.detectors import detector
    from models.stress.scoring import gross, score_beats

    dets = {name: detector(name) for name in ("xqrs", "neurokit2", "pantompkins")}
    per: dict[str, list] = {d: [] for d in dets}
    for x, fs, ref in _mitdb_mlii(mitdb, seconds):
        for name, det in dets.items():
            per[name].append(score_beats(ref, det(x, fs), fs))
    return {d: gross(v).to_dict() for d, v in per.items()}


def mitdb_by_rhythm(mitdb: Path, rhythms: tuple[str, ...] = ("(N", "(AFIB", "(B", "(VT")) -> dict:
    """The same detectors on MIT-BIH's whole records (lead MLII), scored only on the reference
    beats inside each rhythm's episodes (and the detections there): what a detector does on real
    AF, bigeminy and VT, to set beside the twins in those rhythms.

    Returns:
        rhythm -> detector -> gross Se, +P, timing, and the records and seconds it covers.
    """
    from models.rhythm.annotations import rhythm_spans
    from models.stress.detectors import detector
    from models.stress.scoring import gross, score_beats

    dets = {name: detector(name) for name in ("xqrs", "neurokit2", "pantompkins")}
    per: dict[str, dict[str, list]] = {r: {d: [] for d in dets} for r in rhythms}
    cover: dict[str, list] = {r: [0, 0.0] for r in rhythms}
    for hea in sorted(Path(mitdb).glob("*.hea")):
        path = str(hea.with_suffix(""))
        ann = wfdb.rdann(path, "atr")
        fs = float(ann.fs)
        n = wfdb.rdheader(path).sig_len
        rows = list(zip(ann.sample, ann.symbol, ann.aux_note, strict=True))
        spans = [(aux, a, b) for aux, a, b in rhythm_spans(rows, fs, n / fs) if aux in rhythms]
        if not spans:
            continue
        x, ref = _mlii(wfdb.rdrecord(path)), _beat_samples(ann)
        found = {name: np.asarray(det(x, fs), int) for name, det in dets.items()}
        for aux in {a for a, _, _ in spans}:
            inside = np.zeros(n, bool)
            for a, t0, t1 in spans:
                if a == aux:
                    inside[int(t0 * fs):int(t1 * fs)] = True
            cover[aux][0] += 1
            cover[aux][1] += float(inside.sum() / fs)
            for name in dets:
                f = found[name]
                per[aux][name].append(score_beats(ref[inside[ref]], f[inside[np.clip(f, 0, n - 1)]], fs))
    return {r: {"records": cover[r][0], "seconds": round(cover[r][1], 1),
                **{d: gross(v).to_dict() for d, v in per[r].items() if v}} for r in rhythms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=300.0, help="per record, for the detectors")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--twins", action="store_true", help="twins drawn on schedules, read back by the detectors "
                                                         "(with the shipped model), beside mitdb")
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "default")
    ap.add_argument("--contrast", action="store_true", help="twins with the model's contrastive guidance")
    ap.add_argument("--new-morphology", action="store_true",
                    help="patients asked for morphologies they were not registered with, guided and not "
                         "(normal patients at 70, 45 and 130 bpm; patients registered with another morphology)")
    args = ap.parse_args(argv)
    if args.new_morphology:
        from models.twin import TwinModel

        model = TwinModel.load(args.model)
        result = {"new_morphology": new_morphology_scores(model, args.data),
                  # the same banks' beats at a bradycardia and a tachycardia, and patients whose
                  # reference shows another morphology
                  "new_morphology_rates": new_morphology_scores(model, args.data, rates=(45.0, 130.0)),
                  "new_morphology_abnormal": new_morphology_scores(model, args.data, registered="abnormal")}
    elif args.twins:
        from models.twin import TwinModel

        result = {"twins": twin_scores(TwinModel.load(args.model), args.data, contrast=args.contrast),
                  "mitdb": mitdb_timing(args.data / "mitdb", args.seconds),
                  "mitdb_by_rhythm": mitdb_by_rhythm(args.data / "mitdb")}
    else:
        result = {"rr_statistics": rr_statistics(args.data / "mitdb"),
                  "rr_statistics_cpsc2021": rr_statistics(args.data / "cpsc2021", label="cpsc2021"),
                  "detectors": detector_scores(args.data / "mitdb", args.seconds)}
    emit(result, args.out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
