"""Pacing pulses: the paced rhythm takes IEC 60601-2-27's pulse amplitude and width and refuses
others, each stimulus gets the pulse of the request in effect, and a pulse is drawn at its
amplitude for its width at the output rate."""

from __future__ import annotations

import numpy as np
import pytest

from models.rhythm import Beat, Episode, Rhythm, RhythmError
from models.rhythm.pacing import add_pulses, resample, stimuli, stream_problem
from models.rhythm.render import PACE_LEAD_S


def test_the_paced_rhythm_takes_iec_pulses_and_refuses_others():
    r = Rhythm.from_dict({"name": "paced", "rate": 70, "pulse_mv": 700, "pulse_ms": 0.1})
    assert (r.pulse_mv, r.pulse_ms) == (700, 0.1)
    assert (Rhythm("paced").validated().pulse_mv, Rhythm("paced").validated().pulse_ms) == (5.0, 0.5)
    with pytest.raises(RhythmError, match="pulse_mv must be 2-700"):
        Rhythm("paced", pulse_mv=800).validated()
    with pytest.raises(RhythmError, match="pulse_ms must be 0.1-2"):
        Rhythm("paced", pulse_ms=0.05).validated()
    with pytest.raises(RhythmError, match="takes no pulse_mv"):
        Rhythm("vt", pulse_mv=5).validated()


def test_each_stimulus_has_the_pulse_of_its_time():
    beats = [Beat(1.0, "N"), Beat(2.0, "P"), Beat(3.0, "P"), Beat(5.0, "P")]
    asked = [{"at": 0.0, "name": "sinus", "rate": 70}, {"at": 1.5, "name": "paced", "pulse_mv": 10.0, "pulse_ms": 0.5},
             {"at": 4.0, "name": "paced", "pulse_mv": 700.0, "pulse_ms": 2.0}]
    got = stimuli(beats, asked, [], 6.0)
    assert got == [(2.0 - PACE_LEAD_S, 10.0, 0.5), (3.0 - PACE_LEAD_S, 10.0, 0.5), (5.0 - PACE_LEAD_S, 700.0, 2.0)]


def test_asystole_with_a_pacing_rate_has_pulses_that_capture_nothing():
    r = Rhythm.from_dict({"name": "asystole", "duration": 6, "rate": 60, "pulse_mv": 700, "pulse_ms": 2})
    asked = [{"at": 0.0, "name": "sinus", "rate": 70}, {"at": 10.0, **r.to_dict()}]
    episodes = [Episode("sinus", 0.0, 10.0), Episode("asystole", 10.0, 16.0), Episode("sinus", 16.0)]
    got = stimuli([Beat(9.5, "N"), Beat(16.5, "N")], asked, episodes, 30.0)
    assert [t for t, _, _ in got] == [10.5, 11.5, 12.5, 13.5, 14.5, 15.5] and {(mv, ms) for _, mv, ms in got} == {(700, 2)}
    plain = [{"at": 0.0, "name": "sinus"}, {"at": 10.0, "name": "asystole", "duration": 6}]
    assert stimuli([], plain, episodes, 30.0) == []  # asystole without a pacing rate: no pulses


@pytest.mark.parametrize("fs, ms, width", [(10_000, 0.1, 1), (10_000, 2.0, 20), (2_000, 0.5, 1), (32_000, 0.1, 3)])
def test_a_pulse_is_its_amplitude_for_its_width(fs, ms, width):
    x = np.zeros((fs, 2), np.float32)
    y = add_pulses(x, fs, [(0.25, 700.0, ms)])
    on = np.flatnonzero(y[:, 0])
    assert on[0] == fs // 4 and len(on) == width and (y[on] == 700.0).all()
    assert not x.any()  # the input is left alone


def test_resampling_keeps_the_ecg():
    t = np.arange(2500) / 250
    x = np.stack([np.sin(2 * np.pi * 1.2 * t), np.sin(2 * np.pi * 7 * t)], 1).astype(np.float32)
    y = resample(x, 250, 1000)
    t4 = np.arange(10000) / 1000
    ref = np.stack([np.sin(2 * np.pi * 1.2 * t4), np.sin(2 * np.pi * 7 * t4)], 1)
    assert y.shape == (10000, 2) and np.abs(y - ref)[500:-500].max() < 0.01


def test_a_stream_refuses_pulses_it_cannot_carry():
    assert "render --fs" in stream_problem(Rhythm("asystole", rate=60).validated())
    assert stream_problem(Rhythm("asystole").validated()) is None
    assert stream_problem(Rhythm("paced", pulse_mv=700).validated()) is None  # its footprint is drawn
    assert stream_problem(None) is None
