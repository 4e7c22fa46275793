"""Artifacts on a record: each additive kind at an asked SNR measures back at it (NSTDB's
definition, after the 16-bit round trip a record makes), only its interval and leads change,
the same seed gives the same signal, and a bad request is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.ptbxl import LEADS
from models.stress.artifacts import KINDS, RAIL, ArtifactError, Drawn, apply, artifact
from models.stress.noise import qrs_power, snr_db
from stream.segments import GAIN, quantize
from tests.support import mitdb_minute


@pytest.fixture(scope="module")
def clean(data_dir):
    """60 s of MIT-BIH 100's two leads, at 360 Hz, as 12 leads (every lead a copy), with its beats."""
    x, beats, fs = mitdb_minute(data_dir)
    return np.tile(x, (1, 6)).astype(np.float32), beats, fs


ADDITIVE = sorted(k for k, v in KINDS.items() if v.additive)


@pytest.mark.parametrize("kind", ADDITIVE)
@pytest.mark.parametrize("snr", [18, 6, -6])
def test_each_artifact_at_an_asked_snr_measures_back_at_it(clean, data_dir, kind, snr):
    x, beats, fs = clean
    extra = {"depth": 0.0} if kind == "respiration" else {}  # its amplitude modulation is not noise
    a = artifact({"kind": kind, "at": 10, "duration": 30, "snr": snr, "leads": ["II", "V1"], **extra}, LEADS)
    drawn, measured = apply(x, fs, beats, [a], seed=7, nstdb=data_dir / "nstdb")
    y = quantize(drawn).astype(np.float64) / GAIN  # what the WFDB record holds
    lo, hi = int(10 * fs), int(40 * fs)
    inside = beats[(beats >= lo) & (beats < hi)] - lo
    for j in (LEADS.index("II"), LEADS.index("V1")):
        got = snr_db(x[lo:hi, j].astype(np.float64), y[lo:hi, j] - x[lo:hi, j], inside, fs)
        assert abs(got - snr) <= 0.5, (kind, snr, got)
        assert abs(measured[0][j] - snr) <= 0.5
    others = [i for i in range(12) if i not in (1, 6)]
    assert np.abs(y[:, others] - x[:, others]).max() <= 1 / GAIN  # other leads as they were
    assert np.abs(y[:lo] - x[:lo]).max() <= 1 / GAIN and np.abs(y[hi:] - x[hi:]).max() <= 1 / GAIN
    again, _ = apply(x, fs, beats, [a], seed=7, nstdb=data_dir / "nstdb")
    other, _ = apply(x, fs, beats, [a], seed=8, nstdb=data_dir / "nstdb")
    assert np.array_equal(again, drawn)  # the same seed, the same signal
    assert not np.allclose(other[lo:hi], again[lo:hi])


def test_faults_change_the_signal_as_asked(clean, data_dir):
    x, beats, fs = clean
    arts = [artifact({"kind": "lead_off", "at": 5, "duration": 2, "leads": ["I"]}, LEADS),
            artifact({"kind": "lead_off", "at": 5, "duration": 2, "leads": ["II"], "level": "rail"}, LEADS),
            artifact({"kind": "saturation", "at": 20, "duration": 5, "limit": 0.3}, LEADS)]
    y, measured = apply(x, fs, beats, arts, seed=1, nstdb=None)
    a, b = int(5 * fs), int(7 * fs)
    assert (y[a:b, 0] == 0).all() and (y[a:b, 1] == np.float32(RAIL)).all() and (y[a:b, 2:] == x[a:b, 2:]).all()
    s0, s1 = int(20 * fs), int(25 * fs)
    qrs = np.ptp(x[beats[(beats > s0) & (beats < s1)][0] - 18:beats[(beats > s0) & (beats < s1)][0] + 18, 0])
    assert np.abs(y[s0:s1, 0]).max() <= 0.3 * qrs * 1.1 < np.abs(x[s0:s1, 0]).max()
    assert measured == [{}, {}, {}]


@pytest.mark.parametrize("entry, why", [
    ({"kind": "smoke", "at": 1, "duration": 1}, "kind must be one of"),
    ({"kind": "ma", "at": 1, "duration": 1}, "needs snr"),
    ({"kind": "lead_off", "at": 1, "duration": 1, "snr": 3}, "has no snr"),
    ({"kind": "ma", "at": 1, "duration": 0, "snr": 3}, "duration must be > 0"),
    ({"kind": "ma", "at": -1, "duration": 2, "snr": 3}, "at must be"),
    ({"kind": "ma", "at": 1, "duration": 2, "snr": 80}, "snr must be within"),
    ({"kind": "ma", "at": 1, "duration": 2, "snr": 3, "leads": ["X9"]}, "leads must be"),
    ({"kind": "powerline", "at": 1, "duration": 2, "snr": 3, "hz": 400}, "hz must be within"),
    ({"kind": "powerline", "at": 1, "duration": 2, "snr": 3, "colour": 1}, "takes no 'colour'"),
    ({"kind": "lead_off", "at": 1, "duration": 2, "level": "sideways"}, "level must be one of"),
])
def test_a_bad_request_is_refused_with_the_reason(entry, why):
    with pytest.raises(ArtifactError, match=why):
        artifact(entry, LEADS)


def test_nstdb_noise_without_its_folder_and_artifacts_without_beats_are_refused(clean):
    x, beats, fs = clean
    a = artifact({"kind": "ma", "at": 1, "duration": 2, "snr": 6}, LEADS)
    with pytest.raises(ArtifactError, match="no NSTDB folder"):
        apply(x, fs, beats, [a], seed=1, nstdb=None)
    with pytest.raises(ArtifactError, match="beats to measure"):
        apply(x, fs, np.zeros(0, int), [a], seed=1, nstdb=None)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_stream_cut_anywhere_gets_the_same_artifact(clean, data_dir, kind):
    """What a record gets in one piece, a stream gets segment by segment (seams at 0.348 s)."""
    x, beats, fs = clean
    x = x[: int(30 * fs)].astype(np.float64)
    entry = {"kind": kind, "at": 3.3, "duration": 20}
    if KINDS[kind].additive:
        entry["snr"] = 3
    a = artifact(entry, LEADS)
    s = np.array([qrs_power(x[:, j], beats[beats < len(x)], fs) for j in range(12)])
    drawn = Drawn(a, fs, s, seed=5, nstdb=data_dir / "nstdb")
    whole = drawn.draw(x, 0.0)
    step = int(0.348 * fs)
    pieces = np.concatenate([drawn.draw(x[i:i + step], i / fs) for i in range(0, len(x), step)])
    assert np.allclose(whole, pieces, atol=1e-9)
    assert not np.allclose(whole[int(4 * fs):int(20 * fs)], x[int(4 * fs):int(20 * fs)])
