"""The rhythm figures' machinery on real MIT-BIH records: rhythm runs read from the reference
annotations, RR statistics of both sides, and detectors scored EC57's way."""

from __future__ import annotations

import pytest

from models.evaluation.rhythm import detector_scores, rr_statistics


@pytest.fixture()
def two_records(tmp_path, data_dir):
    for rec in ("200", "201"):  # 200: sinus with frequent PVCs, bigeminy, VT runs; 201: AF and sinus
        for ext in ("hea", "dat", "atr"):
            (tmp_path / f"{rec}.{ext}").symlink_to(data_dir / "mitdb" / f"{rec}.{ext}")
    return tmp_path


def test_rr_statistics_read_both_sides(two_records):
    stats = rr_statistics(two_records, seconds=600.0)
    assert stats["coupling"]["mitdb"]["n"] > 50  # 200's PVCs
    assert 0.4 < stats["coupling"]["mitdb"]["median"] < 0.9
    assert stats["cv"]["mitdb"] is not None and stats["cv"]["mitdb"]["median"] > 0.1  # 201's AF is irregular
    for k in ("sdnn_ms", "rmssd_ms", "cv", "coupling", "compensation"):
        assert stats[k]["programs"]["n"] > 0


def test_detectors_scored_against_the_reference_beats(two_records):
    scores = detector_scores(two_records, seconds=60.0)
    assert set(scores) >= {"xqrs (wfdb)", "models.rpeaks (ours)"}
    for s in scores.values():
        assert s["reference_beats"] > 100 and 0.0 <= s["se"] <= 1.0 and 0.0 <= s["ppv"] <= 1.0
    assert scores["xqrs (wfdb)"]["se"] > 0.9


def test_mitdb_detectors_are_scored_inside_each_rhythms_episodes(data_dir, tmp_path):
    """Record 106's one VT episode: the beats scored are the cardiologists' beats inside it."""
    import wfdb

    from models.evaluation.rhythm import mitdb_by_rhythm
    from models.rhythm import BEAT_SYMBOLS

    for ext in ("hea", "dat", "atr"):
        (tmp_path / f"106.{ext}").symlink_to(data_dir / "mitdb" / f"106.{ext}")
    out = mitdb_by_rhythm(tmp_path, ("(VT",))["(VT"]
    ann = wfdb.rdann(str(tmp_path / "106"), "atr")
    marks = [(s, a.strip("\x00")) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True) if sym == "+"]
    i = next(k for k, (_, a) in enumerate(marks) if a == "(VT")
    start, end = marks[i][0], marks[i + 1][0]
    beats = sum(1 for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS and start <= s < end)
    assert out["records"] == 1 and abs(out["seconds"] - (end - start) / ann.fs) < 0.1
    for det in ("xqrs", "neurokit2", "pantompkins"):
        assert out[det]["tp"] + out[det]["fn"] == beats > 0
        assert 0.0 <= out[det]["se"] <= 1.0
