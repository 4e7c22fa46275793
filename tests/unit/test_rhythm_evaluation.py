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
