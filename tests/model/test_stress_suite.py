"""``twin-engine stress``: a suite rendered with the shipped model and scored against the engine's
ground truth. Artifacts measure back at their SNR from the records written; a plug-in that
answers the truth scores perfectly and one that drops known beats scores what it dropped; an
external command works; a malformed answer is an error in the report, not a crash; lead-off
makes the false asystole alarm a tester expects, blamed on it; a rerun gives the same report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb

from models.stress.detectors import PythonDetector, detector
from models.stress.noise import snr_db
from models.stress.suite import read_record, score_record
from models.twin import TwinModel
from tests.support import RECORDS
from twin_engine.config import REPO_ROOT, Settings
from twin_engine.ops.cli import main
from twin_engine.ops.render import render_scenario
from twin_engine.ops.scenario import load_scenario
from twin_engine.ops.stress import SHIPPED, run_suite, suite_files

SCENARIO = f'''
seconds = 40

[[patient]]
id = "pause"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 75 }}

[[change]]
at = 12
patient = "pause"
rhythm = {{ name = "asystole", duration = 6 }}

[[change]]
at = 21
patient = "pause"
rhythm = {{ name = "vt", rate = 170, duration = 3 }}

[[patient]]
id = "noisy"
wfdb = "{RECORDS[1]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 80 }}

[[change]]
at = 20
patient = "noisy"
state = {{ statements = {{ SR = 1 }}, heart_rate = 120 }}
'''
ARTIFACTS = '''
[[artifact]]
patient = "noisy"
kind = "ma"
at = 8
duration = 8
snr = 6
leads = ["II"]

[[artifact]]
patient = "pause"
kind = "lead_off"
at = 28
duration = 6
leads = ["II"]
'''
DETECT = '''
import sys, numpy as np, wfdb
from wfdb import processing
rec = wfdb.rdrecord(sys.argv[1])
found = processing.xqrs_detect(rec.p_signal[:, 0], rec.fs, verbose=False)
wfdb.wrann(sys.argv[1], "qrs", found, symbol=["N"] * len(found), fs=rec.fs)
'''


@pytest.fixture(scope="module")
def model():
    return TwinModel.load(REPO_ROOT / "models" / "default")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    (d / "case.toml").write_text(SCENARIO + ARTIFACTS)
    return d


@pytest.fixture(scope="module")
def ran(model, suite, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    script = out / "detect.py"
    script.write_text(DETECT)
    dets = [detector("xqrs"), detector(f"cmd:{sys.executable} {script} {{record}}"),
            PythonDetector("malformed", lambda x, fs: np.ones((3, 2)))]
    return out, run_suite(Settings(data_dir=data_dir), model, [suite], dets, out)


def test_artifacts_measure_back_at_their_snr_from_the_records(ran, model, data_dir, tmp_path):
    out, _ = ran
    clean_dir = tmp_path / "clean"
    render_scenario(Settings(data_dir=data_dir), model, load_scenario_text(tmp_path, SCENARIO), clean_dir)
    noisy = wfdb.rdrecord(str(out / "records" / "case" / "noisy")).p_signal
    clean = wfdb.rdrecord(str(clean_dir / "noisy")).p_signal
    beats = wfdb.rdann(str(clean_dir / "noisy"), "atr")
    lo, hi = 8 * 250, 16 * 250
    inside = np.array([s for s, sym in zip(beats.sample, beats.symbol, strict=True) if sym == "N" and lo <= s < hi])
    assert abs(snr_db(clean[lo:hi, 1], noisy[lo:hi, 1] - clean[lo:hi, 1], inside - lo, 250) - 6.0) <= 0.5
    assert np.array_equal(noisy[:, 0], clean[:, 0]) and np.array_equal(noisy[:lo], clean[:lo])  # only II, only then
    ann = wfdb.rdann(str(out / "records" / "case" / "noisy"), "atr")
    marks = [(s, a) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True) if sym == "~"]
    assert marks == [(lo, "ma 6dB II"), (hi, "clean")]
    manifest = json.loads((out / "records" / "case" / "manifest.json").read_text())
    art = next(r for r in manifest["records"] if r["record"] == "noisy")["artifacts"][0]
    assert art["kind"] == "ma" and abs(art["measured_snr_db"]["II"] - 6.0) <= 0.5


def load_scenario_text(tmp_path: Path, text: str):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_scenario(p)


def test_the_report_scores_each_detector_and_reports_a_malformed_one(ran):
    out, report = ran
    assert report["cases"] == 2 and (out / "report.md").exists() and (out / "se_ppv_snr.png").exists()
    x, cmd, bad = (report["detectors"][k] for k in ("xqrs", next(k for k in report["detectors"] if "python" in k),
                                                      "malformed"))
    assert x["beats"]["clean"]["se"] > 0.97 and x["beats"]["clean"]["ppv"] > 0.97
    assert x["beats"]["lead_off"]["se"] == 0.0 and x["beats"]["all"]["fn"] >= x["beats"]["lead_off"]["fn"] > 0
    assert json.dumps(cmd["beats"]) == json.dumps(x["beats"])  # the same XQRS through a WFDB record and an annotation file
    assert x["alarms"]["asystole"]["raised"] == 1  # the asystole, found
    # lead II off for 6 s: no beats there, a false asystole alarm, blamed on the lead-off
    assert x["alarms"]["asystole"]["false_by_noise"] == {"lead_off": 1}
    assert x["alarms"]["vt"]["not_raised_by_detector"]
    assert [round(s["to"]) for s in x["steps"]] == [120] and x["steps"][0]["response_s"] <= 3
    assert len(bad["errors"]) == 2 and all("shape" in e for e in bad["errors"])
    assert "Detector errors" in (out / "report.md").read_text()


def test_known_answers_give_known_scores(ran):
    out, _ = ran
    manifest = json.loads((out / "records" / "case" / "manifest.json").read_text())
    rec = read_record(out / "records" / "case", manifest["records"][0])
    truth = np.round(rec.beats * rec.fs).astype(int)
    perfect = score_record(rec, PythonDetector("truth", lambda x, fs: truth))
    b = perfect["beats"]["all"]
    assert (b.fn, b.fp, b.timing_ms) == (0, 0, 0.0)
    assert perfect["alarms"]["asystole"]["raised"] == 1 and perfect["alarms"]["asystole"]["false"] == 0
    symbols = ["V" if k == "V" else "N" for k in rec.kinds]
    labelled = score_record(rec, PythonDetector("labels", lambda x, fs: (truth, symbols)))
    classifier = labelled["beats"]
    # a classifier's V beats raise the VT alarm (CinC 2015: 5 V beats over 100 bpm): the 3 s run at 170
    assert (labelled["alarms"]["vt"]["raised"], labelled["alarms"]["vt"]["false"]) == (1, 0)
    assert perfect["alarms"]["vt"]["not_raised_by_detector"]  # beats alone have no classes
    assert classifier["veb:all"].tp == sum(k == "V" for k, t in zip(rec.kinds, rec.beats, strict=True) if t >= 5)
    assert (classifier["veb:all"].fn, classifier["veb:all"].fp) == (0, 0)
    wrong = score_record(rec, PythonDetector("all-v", lambda x, fs: (truth, ["V"] * len(truth))))["beats"]["veb:all"]
    assert wrong.fp == classifier["all"].tp - classifier["veb:all"].tp  # every N called V
    bad = score_record(rec, PythonDetector("short", lambda x, fs: (truth, ["N"])))
    assert "one symbol per sample" in bad["error"]
    scored = truth[(rec.beats >= 5.0) & (rec.beats < rec.seconds - 0.3)]
    dropped = scored[::4]
    half = score_record(rec, PythonDetector("some", lambda x, fs: np.setdiff1d(truth, dropped)))["beats"]["all"]
    assert (half.tp, half.fn, half.fp) == (len(scored) - len(dropped), len(dropped), 0)


def test_a_rerun_gives_the_same_report(ran, model, suite, data_dir, tmp_path):
    out, report = ran
    again = run_suite(Settings(data_dir=data_dir), model, [suite], [detector("xqrs")], tmp_path / "again")
    assert json.dumps(again["detectors"]["xqrs"]) == json.dumps(report["detectors"]["xqrs"])  # NaN +P alike
    first = wfdb.rdrecord(str(out / "records" / "case" / "noisy")).p_signal
    assert np.array_equal(first, wfdb.rdrecord(str(tmp_path / "again" / "records" / "case" / "noisy")).p_signal)


def test_the_command_and_its_refusals(suite, data_dir, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    assert main(["--config", str(cfg), "stress", str(suite), "--out", str(tmp_path / "r"), "--detector", "xqrs"]) == 0
    assert "2 cases" in capsys.readouterr().out
    assert main(["--config", str(cfg), "stress", str(suite), "--detector", "nope"]) == 2
    assert "unknown detector" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO + ARTIFACTS.replace('kind = "ma"', 'kind = "smoke"'))
    assert main(["--config", str(cfg), "stress", str(bad), "--out", str(tmp_path / "r2")]) == 2
    assert "kind must be one of" in capsys.readouterr().err
    sc = load_scenario_text(tmp_path, SCENARIO + ARTIFACTS)  # play sends the artifacts as events
    sent = [c.event for c in sc.changes if c.event.type == "artifact"]
    assert [(e.patient_id, e.artifact["kind"]) for e in sent] == [("noisy", "ma"), ("pause", "lead_off")]
    assert "at" not in sent[0].artifact and [c.at for c in sc.changes if c.event.type == "artifact"] == [8.0, 28.0]


def test_the_shipped_suite_has_thirty_cases_or_more():
    cases = sum(len(load_scenario(f).registrations) for f in suite_files([SHIPPED]))
    assert cases >= 30


def test_a_recorded_run_scores_as_the_suite_did(ran, tmp_path, capsys, data_dir):
    """``stress --recorded``: the suite's own records read back from their annotation files alone
    (a service's WFDB export writes the same files) give the suite's beat, alarm and meter figures
    and its artifacts; a ``.state`` file's rate step is scored; a folder without records is a
    clear refusal."""
    import shutil

    from models.rhythm.annotations import write_rows
    from models.stress.recorded import entries
    from stream.segments import state_note
    from twin_engine.ops.stress import run_recorded

    out, report = ran
    folder = tmp_path / "export"
    shutil.copytree(out / "records" / "case", folder)
    (folder / "manifest.json").unlink()  # what a service's export has: records and annotation files
    manifest = json.loads((out / "records" / "case" / "manifest.json").read_text())
    got = {e["record"]: e for e in entries(folder)}
    for r in manifest["records"]:
        assert [(a["kind"], a["start"], a["end"], a["leads"], a["snr_db"]) for a in got[r["record"]]["artifacts"]] == \
            [(a["kind"], a["start"], a["end"], a["leads"], a["snr_db"]) for a in r["artifacts"]]
    recorded = run_recorded(folder, [detector("xqrs")], tmp_path / "report")
    by_case = {c["case"].split("/")[-1]: c["scores"]["xqrs"] for c in recorded["per_case"]}
    for c in report["per_case"]:
        mine, theirs = by_case[c["case"].split("/")[-1]], c["scores"]["xqrs"]
        for part in ("beats", "alarms", "hr"):  # as JSON: an undefined +P (NaN) is equal to itself there
            assert json.dumps(mine[part], sort_keys=True) == json.dumps(theirs[part], sort_keys=True), part
    assert "A recorded run" in (tmp_path / "report" / "report.md").read_text()

    # the export's .state file: 80 then 120 bpm at 20 s (the 'noisy' case's step)
    write_rows("noisy", folder, [(0, "+", state_note({"statements": {"SR": 1}, "heart_rate": 80})),
                                 (20 * 250, "+", state_note({"statements": {"SR": 1}, "heart_rate": 120}))], "state", 250)
    [step] = [c for c in run_recorded(folder, [detector("xqrs")], tmp_path / "r2")["per_case"]
              if c["case"].endswith("noisy")][0]["scores"]["xqrs"]["steps"]
    [suite_step] = next(c for c in report["per_case"] if c["case"].endswith("noisy"))["scores"]["xqrs"]["steps"]
    assert (step["from"], step["to"], step["at"]) == (80, 120, 20) and step["response_s"] == suite_step["response_s"]

    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    assert main(["--config", str(cfg), "stress", "--recorded", str(empty), "--out", str(tmp_path / "r3")]) == 2
    assert "no WFDB record" in capsys.readouterr().err


ALARM_SCRIPT = '''
import sys, numpy as np, wfdb
from wfdb import processing
rec = wfdb.rdrecord(sys.argv[1])
found = list(processing.xqrs_detect(rec.p_signal[:, 0], rec.fs, verbose=False))
# an arrhythmia analyser's calls: VT from 21 to 24 s, as epicmp reads them ('+' rhythm changes)
rows = sorted([(int(s), "N", "") for s in found] + [(0, "+", "(N"), (int(21 * rec.fs), "+", "(VT"),
                                                    (int(24 * rec.fs), "+", "(N")])
wfdb.wrann(sys.argv[1], "qrs", np.array([r[0] for r in rows]), symbol=[r[1] for r in rows], aux_note=[r[2] for r in rows],
           fs=rec.fs)
'''


def test_an_alarm_algorithm_raises_its_own_rhythm_alarms(ran, tmp_path):
    """A plug-in that reports rhythms (a dict from a callable, '+' rhythm changes from a command)
    raises VT, VF, AF and asystole itself, scored against the truth; a malformed report is an error."""
    out, _ = ran
    manifest = json.loads((out / "records" / "case" / "manifest.json").read_text())
    rec = read_record(out / "records" / "case", next(r for r in manifest["records"] if r["record"] == "pause"))
    truth = np.round(rec.beats * rec.fs).astype(int)
    calls = [("asystole", 12.0, 18.0), ("vt", 21.0, 24.0)]
    s = score_record(rec, PythonDetector("alarms", lambda x, fs: {"beats": truth, "rhythms": calls}))
    assert (s["alarms"]["vt"]["raised"], s["alarms"]["vt"]["false"]) == (1, 0)
    assert (s["alarms"]["asystole"]["raised"], s["alarms"]["asystole"]["false"]) == (1, 0)
    assert s["alarms"]["vf"]["false"] == 0 and s["episodes"]["vt"].to_dict()["se"] == 1.0
    late = score_record(rec, PythonDetector("late", lambda x, fs: {"beats": truth, "rhythms": [("vt", 35.0, 38.0)]}))
    assert (late["alarms"]["vt"]["missed"], late["alarms"]["vt"]["false"]) == (1, 1)
    assert late["alarms"]["asystole"]["missed"] == 1  # it reports rhythms: asystole is its call too
    script = tmp_path / "alarms.py"
    script.write_text(ALARM_SCRIPT)
    cmd = score_record(rec, detector(f"cmd:{sys.executable} {script} {{record}}"))
    assert (cmd["alarms"]["vt"]["raised"], cmd["alarms"]["vt"]["false"]) == (1, 0)
    for bad, why in (([("torsades", 1.0, 2.0)], "not one of"), ([("vt", 5.0, 1.0)], "start before end"),
                     ("vt", "a list")):
        err = score_record(rec, PythonDetector("bad", lambda x, fs, b=bad: {"beats": truth, "rhythms": b}))
        assert why in err["error"], err
    assert "may have symbols and rhythms" in score_record(rec, PythonDetector("odd", lambda x, fs: {"peaks": truth}))["error"]
