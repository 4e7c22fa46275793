"""Alarm conditions by the CinC 2015 definitions, their scoring (raised, missed, false, delay),
epicmp-style episode figures, and the heart-rate meter's accuracy and step response, on beats
whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from models.stress import alarms as al
from models.stress import hr_meter


def regular(start: float, end: float, bpm: float) -> list[float]:
    return list(np.arange(start, end, 60.0 / bpm))


def test_asystole_brady_and_tachy_by_their_definitions():
    beats = regular(0, 20, 75) + regular(26, 40, 75) + regular(40, 60, 35) + regular(60, 80, 150)
    c = al.conditions(beats, 80.0)
    gap_start = max(b for b in beats if b < 20)
    assert c["asystole"] == [(pytest.approx(gap_start + 4.0), 26.0)]
    brady_onsets = [a for a, _ in c["brady"]]
    # the 5 beats spanning the pause read under 40 bpm, and so does the run at 35 bpm from its 5th beat on
    assert any(26 <= a < 30 for a in brady_onsets)
    run35 = [b for b in beats if 40 <= b < 60]
    assert any(abs(a - run35[4]) < 1e-6 for a in brady_onsets)  # the 5th beat at 35 bpm
    run150 = [b for b in beats if b >= 60]
    assert [a for a, _ in c["tachy"]] == [pytest.approx(run150[16])]  # the 17th beat completes 16 RRs over 140
    assert "vt" not in c and "vf" not in c  # not knowable from a QRS detector's beats


def test_vt_needs_five_fast_ventricular_beats_and_vf_is_not_asystole():
    beats = regular(0, 10, 70) + regular(10, 12.0, 180) + regular(12, 20, 70) + regular(30, 40, 70)
    kinds = ["V" if 10 <= b < 12 else "N" for b in beats]
    c = al.conditions(beats, 40.0, kinds, vf=[(20.0, 30.0)])
    v = [b for b in beats if 10 <= b < 12]
    assert len(v) == 6 and c["vt"] == [(pytest.approx(v[4]), pytest.approx(v[5]))]
    assert c["vf"] == [(24.0, 30.0)]
    assert c["asystole"] == [] and c["brady"] == []  # the beatless VF is neither
    short = al.conditions(beats, 40.0, ["V" if 10 <= b < 10.9 else "N" for b in beats], vf=[])
    assert short["vt"] == []  # three V beats are not VT


def test_alarm_scoring_counts_delays_misses_and_false_alarms():
    truth = [(10.0, 20.0), (50.0, 55.0), (100.0, 104.0)]
    found = [(11.5, 19.0), (49.0, 56.0), (200.0, 210.0), (300.0, 301.0)]
    s = al.score_alarms(truth, found)
    assert (s.raised, s.missed, s.false) == (2, 1, 2)
    assert s.delays == (1.5, -1.0)
    assert al.score_alarms(truth, found, vf=[(195.0, 205.0)]).false == 1  # an alarm in VF is a true one
    e = al.score_episodes(truth, found)
    assert (e.true_hit, e.true_total, e.found_hit, e.found_total) == (2, 3, 2, 4)
    assert e.overlap_s == pytest.approx(7.5 + 5.0) and e.true_s == pytest.approx(19.0)
    d = al.pooled([e, e]).to_dict()
    assert d["se"] == pytest.approx(2 / 3, abs=1e-4) and d["duration_ppv"] == pytest.approx(12.5 / 25.5, abs=1e-4)


def test_the_meter_reads_the_truth_and_settles_after_a_step():
    beats = regular(0, 30, 80) + regular(30, 60, 120)
    at = np.array([10.0, 29.5, 50.0])
    assert hr_meter.meter(beats, at) == pytest.approx([80, 80, 120], abs=0.1)
    assert hr_meter.meter(beats, np.array([70.0]))[0] == 0.0  # 10 s without a beat: asystole reads 0
    acc = hr_meter.accuracy(beats, beats, 5, 60)
    assert acc["within_1bpm"] == 1.0 and acc["median_error_bpm"] == 0.0
    missing = [b for i, b in enumerate(beats) if i % 10 != 5]  # a missed beat now and then
    worse = hr_meter.accuracy(beats, missing, 5, 60)
    assert worse["within_1bpm"] < 0.8 and worse["max_error_bpm"] > 10
    # four RRs at 120 bpm replace the 80s: within 10% after about 1.5 s
    assert 1.0 <= hr_meter.step_response(beats, 30.0, 120.0, 60.0) <= 2.1
    assert hr_meter.step_response(beats, 30.0, 60.0, 60.0) is None  # never reads 60


def test_the_reference_af_detector_finds_irregular_rr_and_not_regular_or_bigeminal():
    from models.stress.af import af_episodes

    rng = np.random.default_rng(3)
    sinus = np.cumsum(0.8 + 0.02 * rng.standard_normal(100))  # 80 s at 75 bpm with a little HRV
    af = sinus[-1] + np.cumsum(rng.uniform(0.35, 0.95, 200))  # 130 s of AF
    after = af[-1] + np.cumsum(0.8 + 0.02 * rng.standard_normal(100))
    [(a, b)] = af_episodes(np.concatenate([sinus, af, after]))
    assert abs(a - sinus[-1]) < 15 and abs(b - af[-1]) < 15  # within half a window of its edges
    assert af_episodes(sinus) == [] and af_episodes(np.cumsum(np.tile([0.5, 1.0], 100))) == []  # bigeminy
    assert af_episodes(af[:30]) == []  # under 30 s: not an episode


def test_af_alarms_come_from_the_truth_or_the_detector():
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.uniform(0.35, 0.95, 200))
    assert al.conditions(t, t[-1], af=[(10.0, 70.0)])["afib"] == [(10.0, 70.0)]
    found = al.conditions(t, t[-1])["afib"]
    assert len(found) == 1 and found[0][1] - found[0][0] > 0.8 * t[-1]
