"""Score one rendered record (``twin-engine render``'s WFDB record, annotation file and manifest
entry) for one detector: beats as EC57 (overall, and inside each artifact against the clean
rest), the heart-rate meter and its step responses, alarms and their episodes (the CinC 2015
definitions applied to the true beats and to the detected ones).

The first ``learning_s`` of a record are the detector's learning period (EC57 leaves out 5 min;
a suite's records are a minute or two) and are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from models.rhythm.annotations import read_annotations
from models.stress import alarms as al
from models.stress import hr_meter
from models.stress.detectors import CommandDetector, DetectorError, PythonDetector
from models.stress.scoring import BeatScore, score_beats, score_classes

LEARNING_S = 5.0
STEP_BPM = 20.0  # a change of the asked rate by at least this much is scored as a step
STEP_RHYTHMS = ("sinus", "sinus_brady", "sinus_tachy")  # steady rates a meter settles on


@dataclass(frozen=True)
class Record:
    """A rendered record read back: one lead's signal, the truth, what the manifest says."""

    name: str
    signal: np.ndarray
    fs: float
    lead: str  # the lead's name
    beats: np.ndarray  # true beat times (s)
    kinds: list[str]
    vf: list[tuple[float, float]]
    truth: dict  # the manifest's entry: changes, episodes, artifacts
    af: tuple[tuple[float, float], ...] = ()  # the true AF episodes

    @property
    def seconds(self) -> float:
        return len(self.signal) / self.fs


def read_record(folder: Path, entry: dict, lead: str = "II") -> Record:
    """A record of ``folder`` (its manifest ``entry``) with ``lead`` and its annotations (up to
    its ``unannotated_from``, where it has one)."""
    path = Path(folder) / entry["record"]
    rec = wfdb.rdrecord(str(path))
    j = rec.sig_name.index(lead)
    beats, episodes = read_annotations(path)
    cut = entry.get("unannotated_from")  # a recorded run's stretch without beat annotations
    if cut is not None:
        rec.p_signal = rec.p_signal[:int(round(cut * rec.fs))]
        beats = [b for b in beats if b.time < cut]
        episodes = [e for e in episodes if e.start < cut]
    end = len(rec.p_signal) / rec.fs
    vf = [(e.start, end if e.end is None else e.end) for e in episodes if e.rhythm == "vf"]
    af = tuple((e.start, end if e.end is None else e.end) for e in episodes if e.rhythm == "afib")
    return Record(entry["record"], rec.p_signal[:, j].astype(np.float64), float(rec.fs), lead,
                  np.array([b.time for b in beats]), [b.kind for b in beats], vf, entry, af)


def noise_at(record: Record, t: float, before: float = 0.0) -> str:
    """What covers the scored lead at time ``t`` (or at any time ``before`` seconds before it):
    ``kind|snr`` (``kind`` for one without an SNR) of the last artifact begun, or ``clean``."""
    label = "clean"
    for a in record.truth.get("artifacts", []):
        on_lead = a["leads"] is None or record.lead in a["leads"]
        if on_lead and a["start"] <= t and t - before < a["end"]:
            label = a["kind"] if a["snr_db"] is None else f"{a['kind']}|{a['snr_db']:g}"
    return label


def score_record(record: Record, detect: PythonDetector | CommandDetector, learning_s: float = LEARNING_S) -> dict:
    """Every figure of one record for one detector.

    Returns:
        ``beats`` (BeatScore per noise label, and ``all``; for a classifier ``veb:all`` and
        ``sveb:all`` too), ``hr`` (meter accuracy), ``steps``
        (response to each rate step), ``alarms`` (per alarm: raised, missed, false, delays, each
        false onset with its noise label), ``episodes`` (per alarm, epicmp's parts); or
        ``error`` where the detector failed or answered nonsense.
    """
    fs, end = record.fs, record.seconds
    try:
        analysis = detect.analyse(record.signal, fs)
    except DetectorError as exc:
        return {"error": str(exc)}
    samples, kinds = analysis.samples, analysis.kinds
    found = np.asarray(samples, int) / fs
    w = 0.15
    keep_ref = (record.beats >= learning_s) & (record.beats < end - 0.3)
    keep_test = (found >= learning_s - w) & (found < end - 0.3 + w)
    ref, test = record.beats[keep_ref], found[keep_test]
    labels = [noise_at(record, t) for t in ref]
    test_labels = [noise_at(record, t) for t in test]
    beats: dict[str, BeatScore] = {"all": score_beats(np.round(ref * fs), np.round(test * fs), fs)}
    if kinds is not None:  # a beat classifier: EC57's VEB and SVEB figures as well
        classes = score_classes(np.round(ref * fs), list(np.asarray(record.kinds)[keep_ref]), np.round(test * fs),
                                list(np.asarray(kinds)[keep_test]), fs)
        beats.update({f"{k}:all": v for k, v in classes.items()})
    for label in sorted(set(labels) | set(test_labels)):
        r = np.array([t for t, lab in zip(ref, labels, strict=True) if lab == label])
        d = np.array([t for t, lab in zip(test, test_labels, strict=True) if lab == label])
        beats[label] = score_beats(np.round(r * fs), np.round(d * fs), fs)
    truth_c = al.conditions(record.beats, end, record.kinds, record.vf, af=record.af)
    found_c = al.conditions(found, end, kinds)  # a beat classifier's V beats make VT alarms
    if analysis.rhythms is not None:  # an alarm algorithm: the rhythm alarms are its own calls
        found_c.update(analysis.rhythms)
    alarms, episodes = {}, {}
    for name, true_iv in truth_c.items():
        true_iv = [iv for iv in true_iv if iv[0] >= learning_s]
        if name not in found_c:
            alarms[name] = {"truth": len(true_iv), "not_raised_by_detector": True}
            continue
        got = [iv for iv in found_c[name] if iv[0] >= learning_s]
        s = al.score_alarms(true_iv, got, record.vf)
        alarms[name] = {**s.to_dict(), "delays": list(s.delays),
                        # an alarm is blamed on an artifact that covered the lead over the beats it read
                        "false_at": [{"time": round(f, 2), "noise": noise_at(record, f, al.LOOKBACK_S)}
                                     for f in s.false_at]}
        episodes[name] = al.score_episodes(true_iv, got)
    steps = []
    changes = record.truth.get("changes", [])
    for prev, ch, nxt in zip(changes, changes[1:], [*changes[2:], None], strict=False):
        steady = ch.get("name") in STEP_RHYTHMS and ch.get("duration") is None
        if steady and prev.get("rate") and ch.get("rate") and abs(ch["rate"] - prev["rate"]) >= STEP_BPM:
            until = end if nxt is None else nxt["at"]
            steps.append({"at": ch["at"], "from": prev["rate"], "to": ch["rate"],
                          "response_s": hr_meter.step_response(found, ch["at"], ch["rate"], until),
                          "truth_response_s": hr_meter.step_response(record.beats, ch["at"], ch["rate"], until)})
    return {"beats": beats, "hr": hr_meter.accuracy(record.beats, found, learning_s, end), "steps": steps,
            "alarms": alarms, "episodes": episodes, "found": found}
