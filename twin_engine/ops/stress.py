"""``twin-engine stress SUITE``: a suite of scenario files drawn offline on the service's own
generator and rhythm layer (``twin-engine render``), each record fed to each detector, every
figure scored against the engine's ground truth, and a report (``report.json``,
``report.md``, plots) written.

A suite is a folder of scenario files (or files named one by one); each patient of each file
is a case. The same suite, model and seeds give the same records and the same scores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from models.stress import alarms as al
from models.stress.detectors import CommandDetector, PythonDetector
from models.stress.recorded import entries
from models.stress.report import write_report
from models.stress.scoring import BeatScore, gross
from models.stress.suite import LEARNING_S, read_record, score_record
from models.twin import TwinModel
from twin_engine.config import Settings
from twin_engine.ops.render import render_scenario
from twin_engine.ops.scenario import ScenarioError, load_scenario

SHIPPED = Path(__file__).resolve().parent / "suites" / "standard"


def suite_files(paths: list[Path]) -> list[Path]:
    """The scenario files of ``paths`` (folders: their ``*.toml``, sorted).

    Raises:
        ScenarioError: a path that is neither, or no scenario at all.
    """
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.toml"))
        elif p.is_file():
            files.append(p)
        else:
            raise ScenarioError(f"{p}: no such scenario file or folder")
    if not files:
        raise ScenarioError(f"no scenario files in {', '.join(map(str, paths))}")
    return files


def run_suite(settings: Settings, model: TwinModel, paths: list[Path], detectors: list[PythonDetector | CommandDetector],
              out: Path, lead: str = "II", learning_s: float = LEARNING_S) -> dict:
    """Render every case of the suite under ``out/records``, score it per detector, write the
    report to ``out``; returns the report's contents.

    Raises:
        ScenarioError: a scenario that cannot be read or rendered (the message says which).
    """
    out = Path(out)
    t0 = time.perf_counter()
    files = suite_files(paths)
    scenarios = [(f, load_scenario(f, model.meta.vocab)) for f in files]  # every file checked first
    folders = []
    for f, scenario in scenarios:
        folder = out / "records" / f.stem
        try:
            render_scenario(settings, model, scenario, folder)
        except Exception as exc:  # noqa: BLE001 - EventError, BankError: the scenario is at fault
            raise ScenarioError(f"{f}: {exc}") from None
        folders.append((f.stem, folder, json.loads((folder / "manifest.json").read_text())["records"]))
    return _score(folders, detectors, out, lead, learning_s, t0,
                  {"suite": [str(f) for f in files], "fs": model.meta.fs, "model_version": model.meta.version})


def run_recorded(folder: Path, detectors: list[PythonDetector | CommandDetector], out: Path, lead: str = "II",
                 learning_s: float = LEARNING_S) -> dict:
    """Score the records a run wrote (a service's WFDB export, or ``render``'s), their truth read
    from their own annotation files (``models.stress.recorded``); the report as ``run_suite``'s.

    Raises:
        RecordedError: no record to score, or a damaged annotation file.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    return _score([(folder.name, folder, entries(folder))], detectors, Path(out), lead, learning_s, t0,
                  {"recorded": str(folder)})


def _score(folders: list[tuple[str, Path, list[dict]]], detectors: list[PythonDetector | CommandDetector],
           out: Path, lead: str, learning_s: float, t0: float, about: dict) -> dict:
    """Score every record of ``folders`` ((name, folder, manifest entries)) per detector, write the
    report to ``out``; returns the report's contents."""
    cases, per_det = [], {d.name: [] for d in detectors}
    for stem, folder, records in folders:
        for entry in records:
            rec = read_record(folder, entry, lead)
            case = {"case": f"{stem}/{rec.name}", "seconds": rec.seconds, "beats": len(rec.beats),
                    "artifacts": entry["artifacts"], "changes": entry["changes"], "episodes": entry["episodes"],
                    "scores": {}}
            if entry.get("unannotated_from") is not None:  # a recorded run's stretch without beats: scored up to it
                case["unannotated_from"] = entry["unannotated_from"]
            for d in detectors:
                s = score_record(rec, d, learning_s)
                per_det[d.name].append((case["case"], rec, s))
                case["scores"][d.name] = _jsonable(s)
            cases.append(case)
    summary = {name: _summary(rows) for name, rows in per_det.items()}
    first = {k: v for k, v in about.items() if k in ("suite", "recorded")}
    report = {**first, "lead": lead, "learning_s": learning_s, **{k: v for k, v in about.items() if k not in first},
              "cases": len(cases), "detectors": summary, "per_case": cases}
    write_report(out, report, per_det)
    report["seconds_taken"] = round(time.perf_counter() - t0, 1)  # in what is returned, not in the report files
    return report


def _jsonable(s: dict) -> dict:
    if "error" in s:
        return s
    return {"beats": {k: v.to_dict() for k, v in s["beats"].items()}, "hr": s["hr"], "steps": s["steps"],
            "alarms": s["alarms"], "episodes": {k: v.to_dict() for k, v in s["episodes"].items()}}


def _summary(rows: list[tuple[str, object, dict]]) -> dict:
    """Gross figures of one detector over the suite."""
    ok = [s for _, _, s in rows if "error" not in s]
    by_noise: dict[str, list[BeatScore]] = {}
    for s in ok:
        for label, b in s["beats"].items():
            by_noise.setdefault(label, []).append(b)
    hours = sum(rec.seconds for _, rec, s in rows if "error" not in s) / 3600.0
    alarms = {}
    for name in al.ALARMS:
        got = [s["alarms"][name] for s in ok if name in s["alarms"]]
        if not got:
            continue
        if any(g.get("not_raised_by_detector") for g in got):
            alarms[name] = {"truth": sum(g["truth"] for g in got), "not_raised_by_detector": True}
            continue
        false_by = {}
        for g in got:
            for f in g["false_at"]:
                false_by[f["noise"]] = false_by.get(f["noise"], 0) + 1
        delays = [d for g in got for d in g["delays"]]
        alarms[name] = {"raised": sum(g["raised"] for g in got), "missed": sum(g["missed"] for g in got),
                        "false": sum(g["false"] for g in got),
                        "false_per_hour": round(sum(g["false"] for g in got) / hours, 2) if hours else None,
                        "median_delay_s": round(float(sorted(delays)[len(delays) // 2]), 2) if delays else None,
                        "max_delay_s": round(max(delays), 2) if delays else None, "false_by_noise": false_by,
                        "episodes": al.pooled([s["episodes"][name] for s in ok if name in s["episodes"]]).to_dict()}
    hr = [s["hr"] for s in ok if s["hr"].get("seconds")]
    secs = sum(h["seconds"] for h in hr)
    steps = [st for s in ok for st in s["steps"]]
    return {"records": len(rows), "errors": [f"{c}: {s['error']}" for c, _, s in rows if "error" in s],
            "beats": {k: gross(v).to_dict() for k, v in sorted(by_noise.items())},
            "hr": {"seconds": secs,
                   "within_1bpm": round(sum(h["within_1bpm"] * h["seconds"] for h in hr) / secs, 4) if secs else None,
                   "within_10pct": round(sum(h["within_10pct"] * h["seconds"] for h in hr) / secs, 4) if secs else None},
            "steps": steps, "alarms": alarms}
