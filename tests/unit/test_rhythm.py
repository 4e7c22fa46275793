"""The rhythm layer: each program's beats against its definition, requests over a stream's
life, the same beats however a stream is cut into windows, and refusals with a reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.conditions import CardiacState
from models.rhythm import BeatSchedule, Rhythm, RhythmError, rhythm_names


def _beats(rhythm: Rhythm, seconds: float, seed: int = 3) -> list:
    return BeatSchedule(rhythm, 0.0, seed).beats(seconds)


def _rr(beats) -> np.ndarray:
    return np.diff([b.time for b in beats])


@pytest.mark.parametrize("rate", [30, 45, 60, 80, 120, 150, 180])
def test_sinus_holds_the_asked_rate_within_1_bpm_over_every_10_s(rate):
    name = "sinus_brady" if rate < 60 else "sinus_tachy" if rate > 100 else "sinus"
    beats = _beats(Rhythm(name, rate=rate), 300.0)
    times = np.array([b.time for b in beats])
    for t0 in range(0, 290, 10):
        inside = times[(times >= t0) & (times < t0 + 10)]
        assert abs(60.0 / np.diff(inside).mean() - rate) <= 1.0, (rate, t0)
    rr = _rr(beats)
    assert rr.std() > 0.002 * 60 / rate  # variability, not a metronome (less at faster rates)
    assert all(b.kind == "N" for b in beats)


def test_pvc_patterns_alternate_with_coupling_and_a_full_compensatory_pause():
    r = Rhythm("pvc", rate=75, pattern="bigeminy", coupling=0.6)
    beats = _beats(r, 60.0)
    kinds = "".join(b.kind for b in beats)
    assert kinds.startswith("N") and "NN" not in kinds[1:] and "VV" not in kinds
    rr, base = _rr(beats), 60 / 75
    for i, b in enumerate(beats[1:-1], start=1):
        if b.kind == "V":  # coupled to the beat before, and the next beat back on the sinus grid
            assert rr[i - 1] == pytest.approx(0.6 * base, abs=1e-6)
            assert rr[i - 1] + rr[i] == pytest.approx(2 * base, abs=1e-6)
    tri = "".join(b.kind for b in _beats(Rhythm("pvc", pattern="trigeminy"), 60.0))
    assert "NNV" * 5 in tri and "NNN" not in tri[1:] and "VV" not in tri
    couplets = "".join(b.kind for b in _beats(Rhythm("pvc", pattern="couplet", probability=0.3), 300.0))
    assert "NVVN" in couplets and "VVV" not in couplets
    isolated = [b.kind for b in _beats(Rhythm("pvc", probability=0.1), 600.0)]
    assert 0.05 < isolated.count("V") / len(isolated) < 0.15


def test_pac_resets_the_sinus_node():
    beats = _beats(Rhythm("pac", rate=60, probability=0.3, coupling=0.7), 120.0)
    rr = _rr(beats)
    pacs = [i for i, b in enumerate(beats[1:-1], start=1) if b.kind == "S"]
    assert pacs
    for i in pacs:
        assert rr[i - 1] == pytest.approx(0.7, abs=1e-6) and 0.9 < rr[i] < 1.1  # one RR after the PAC


def test_af_is_irregular_and_flutter_conducts_at_its_ratio():
    rr = _rr(_beats(Rhythm("afib", rate=110), 600.0))
    assert 0.15 < rr.std() / rr.mean() < 0.3 and rr.min() >= 0.24
    assert abs(60 / rr.mean() - 110) < 5
    fl = _rr(_beats(Rhythm("aflutter", rate=150, ratio=2), 60.0))
    assert np.allclose(fl, 0.4, rtol=0.03)
    variable = _rr(_beats(Rhythm("aflutter", rate=150, ratio=0), 120.0))
    assert {round(x / 0.2) for x in variable} == {2, 3, 4}


def test_a_vt_run_has_its_length_and_rate_then_the_rhythm_before_it_resumes():
    s = BeatSchedule(Rhythm("sinus", rate=60), 0.0, 5)
    s.request(Rhythm("vt", rate=180, duration=8.0), 20.0)
    beats = s.beats(60.0)
    v = [b for b in beats if b.kind == "V"]
    assert 20.0 <= v[0].time < 20.4 and v[-1].time < 28.0
    assert abs(60 / np.diff([b.time for b in v]).mean() - 180) < 3 and len(v) in range(23, 26)
    after = [b for b in beats if b.time > 28.0]
    assert all(b.kind == "N" for b in after) and abs(60 / _rr(after).mean() - 60) < 1.5
    assert [(e.rhythm, e.start, e.end) for e in s.episodes(60.0)] == [("sinus", 0.0, 20.0), ("vt", 20.0, 28.0),
                                                                    ("sinus", 28.0, None)]


def test_asystole_vf_and_pause_have_no_beats_where_they_hold():
    s = BeatSchedule(Rhythm("sinus", rate=60), 0.0, 5)
    s.request(Rhythm("asystole", duration=6.0), 10.0)
    s.request(Rhythm("vf"), 30.0)
    times = np.array([b.time for b in s.beats(50.0)])
    assert not ((times > 10.0) & (times < 16.0)).any() and not (times > 30.0).any()
    assert ((times >= 16.0) & (times < 30.0)).sum() >= 12
    assert [e.rhythm for e in s.episodes(50.0)] == ["sinus", "asystole", "sinus", "vf"]
    p = BeatSchedule(Rhythm("sinus", rate=60), 0.0, 5)
    p.request(Rhythm("pause", duration=3.5), 10.0)
    rr = _rr(p.beats(30.0))
    assert np.isclose(rr, 3.5).sum() == 1 and (rr[~np.isclose(rr, 3.5)] < 1.2).all()


def test_the_beats_are_the_same_however_the_stream_is_cut():
    def run(cuts):
        s = BeatSchedule(Rhythm("pvc", pattern="couplet", probability=0.2), 100.0, 11)
        s.request(Rhythm("afib", rate=120, duration=15.0), 130.0)
        out = []
        for t in cuts:
            out += s.beats(t)
        return [(round(b.time, 9), b.kind) for b in out]

    whole = run([200.0])
    assert run(list(np.arange(102.0, 200.1, 2.0))) == whole == run([137.3, 137.31, 160.0, 200.0])
    assert len({b[0] for b in whole}) == len(whole)  # none doubled
    assert all(a[0] < b[0] for a, b in zip(whole, whole[1:], strict=False))


def test_requests_out_of_range_or_unknown_are_refused_with_the_reason():
    for bad, why in [({"name": "vt", "rate": 300}, "vt rate must be 100-250"),
                     ({"name": "torsades"}, "unknown rhythm 'torsades'"),
                     ({"name": "sinus", "rate": 20}, "sinus rate must be 30-180"),
                     ({"name": "pvc", "pattern": "quadrigeminy"}, "pattern must be one of"),
                     ({"name": "sinus", "speed": 2}, "unknown rhythm parameter(s) speed"),
                     ({"name": "vf", "rate": 40}, "'vf' takes no rate"),
                     ({"name": "aflutter", "rate": 100, "ratio": 4}, "flutter runs at 240-350")]:
        with pytest.raises(RhythmError, match=why.replace("(", r"\(").replace(")", r"\)")):
            Rhythm.from_dict(bad)
    assert Rhythm.from_dict({"name": "vt", "rate": 180, "duration": 8}).to_dict() == {"name": "vt", "rate": 180,
                                                                                      "duration": 8}
    assert {"sinus", "afib", "aflutter", "pvc", "pac", "vt", "pause", "asystole", "vf"} <= set(rhythm_names())


def test_the_ground_truth_reads_back_with_wfdb_rdann(tmp_path):
    import wfdb

    from models.rhythm.annotations import read_annotations, write_annotations

    s = BeatSchedule(Rhythm("pvc", pattern="bigeminy"), 1000.0, 2)
    s.request(Rhythm("vt", rate=190, duration=5.0), 1010.0)
    s.request(Rhythm("asystole", duration=4.0), 1020.0)
    beats, episodes = s.beats(1040.0), s.episodes(1040.0)
    write_annotations("twin1", tmp_path, 250, 1000.0, beats, episodes)
    ann = wfdb.rdann(str(tmp_path / "twin1"), "atr")
    assert [a for a in ann.aux_note if a] == ["(B", "(VT", "(B", "(ASYS", "(B"]
    beat_syms = [sym for sym in ann.symbol if sym != "+"]
    assert beat_syms == [b.symbol for b in beats] and set(beat_syms) == {"N", "V"}
    assert list(ann.sample[[i for i, sym in enumerate(ann.symbol) if sym != "+"]]) == \
        [round((b.time - 1000.0) * 250) for b in beats]
    back, eps = read_annotations(tmp_path / "twin1")
    assert [b.kind for b in back] == [b.kind for b in beats]
    assert [e.rhythm for e in eps] == ["bigeminy", "vt", "bigeminy", "asystole", "bigeminy"]


def test_a_schedule_written_down_and_read_back_goes_on_with_the_same_beats():
    import json

    s = BeatSchedule(Rhythm("sinus", rate=70), 0.0, 3)
    s.request(Rhythm("vt", rate=180, duration=8), 10.0)
    s.request(Rhythm("pvc", pattern="bigeminy"), 30.0)
    s.beats(12.3)  # mid-VT, with a beat made past the window
    back = BeatSchedule.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.beats(60.0) == s.beats(60.0)
    s.forget(40.0)  # what no time from 40 s on depends on goes
    assert len(s.to_dict()["requests"]) == 1 and [e.rhythm for e in s.episodes(60.0)] == ["bigeminy"]
    with pytest.raises(ValueError):
        BeatSchedule.from_dict({"requests": []})
    with pytest.raises(RhythmError):
        BeatSchedule.from_dict({**s.to_dict(), "requests": [[0.0, {"name": "vt", "rate": 999}, None]]})


@pytest.mark.parametrize("requests", [
    [("vt", 15.0, 6.0)],  # a timed run, then back to sinus for good
    [("pvc", 10.0, None), ("vt", 30.0, 6.0), ("pause", 90.0, None)],
    [("afib", 20.0, 50.0), ("vt", 40.0, 5.0), ("asystole", 150.0, 4.0)],  # one timed run inside another
])
def test_forgetting_the_past_as_a_stream_does_changes_no_beat_and_no_episode(requests):
    """The stream drops what lies 60 s behind each window; the beats and the rhythms opened must
    be those of a schedule that keeps everything (a timed VT once became the rhythm for good
    60 s after it began)."""
    made = {"vt": dict(rate=180), "pvc": dict(pattern="bigeminy"), "afib": dict(rate=110),
            "pause": dict(duration=2.5), "asystole": {}}

    def run(forget: bool) -> tuple[list, list]:
        s = BeatSchedule(Rhythm("sinus", rate=70), 0.0, 5)
        beats, opened = [], []
        for i in range(300):
            t0 = float(i)
            for name, at, duration in requests:
                if at == t0:
                    kw = dict(made[name])
                    if duration is not None:
                        kw["duration"] = duration
                    s.request(Rhythm(name, **kw), at)
            beats += s.beats(t0 + 1.0)
            for e in s.episodes(t0 + 1.0):
                if (e.end is None or e.end > t0) and (not opened or opened[-1][0] != e.rhythm):
                    opened.append((e.rhythm, round(e.start, 6)))
            if forget:
                s.forget(t0 - 60.0)
        return beats, opened

    kept, forgot = run(False), run(True)
    assert forgot[0] == kept[0] and forgot[1] == kept[1], (forgot[1], kept[1])
    assert kept[1][-1][0] in ("sinus", "bigeminy") and kept[0][-1].time > 295
    assert "pause" not in [name for name, _ in kept[1]]  # a pause is its beat's long RR, no episode


@pytest.mark.parametrize("irregularity", [0.1, 0.2, 0.3])
def test_af_irregularity_is_the_rr_spread_asked_for(irregularity):
    rr = _rr(_beats(Rhythm("afib", rate=90, irregularity=irregularity), 600.0))
    assert abs(rr.std() / rr.mean() - irregularity) <= 0.03
    assert abs(60.0 / rr.mean() - 90) <= 3.0
    with pytest.raises(RhythmError, match="irregularity"):
        Rhythm("afib", irregularity=0.9).validated()
    with pytest.raises(RhythmError, match="takes no irregularity"):
        Rhythm("vt", irregularity=0.2).validated()


def test_a_bank_asked_with_or_without_contrast_is_another_bank():
    """The stream keeps banks by ``look_key``: a state that says how it is drawn gets its own,
    and a state that does not keeps the key its saved tracks were written with."""
    from dataclasses import replace

    from twin_engine.worker.rhythm import look_key

    s = CardiacState({"CLBBB": 1.0, "SR": 1.0}, 80, 60.0, 1)
    assert look_key(s) == json.dumps([[["CLBBB", 1.0], ["SR", 1.0]], 60.0, 1])
    keys = {look_key(replace(s, contrast=c)) for c in (None, True, False)}
    assert len(keys) == 3
    assert look_key(replace(s, heart_rate=120)) == look_key(s)  # the rate is the schedule's, not the bank's
