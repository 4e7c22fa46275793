"""Stress testing's parts on real data: NSTDB noise at an asked SNR measures back at it,
detector plug-ins (Python and external command) scored EC57's way, malformed answers refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from models.stress.detectors import CommandDetector, DetectorError, PythonDetector, detector
from models.stress.noise import NoiseError, add_noise, read_noise, snr_db
from models.stress.scoring import gross, score_beats
from tests.support import mitdb_minute


@pytest.fixture(scope="module")
def record(data_dir):
    x, beats, fs = mitdb_minute(data_dir)
    return x[:, 0], beats, fs


@pytest.mark.parametrize("kind", ["bw", "ma", "em"])
@pytest.mark.parametrize("snr", [24, 6, -6])
def test_noise_at_an_asked_snr_measures_back_at_it(record, data_dir, kind, snr):
    clean, beats, fs = record
    noise = read_noise(data_dir / "nstdb", kind, fs, len(clean) / fs, seed=3)
    noisy = add_noise(clean, beats, fs, noise, snr)[:, 0]
    assert abs(snr_db(clean, noisy - clean, beats, fs) - snr) < 0.5
    assert not np.allclose(noisy, clean)


def test_noise_is_reproducible_and_refuses_what_it_cannot_do(data_dir):
    a = read_noise(data_dir / "nstdb", "ma", 250, 20.0, seed=1)
    assert a.shape == (5000, 2) and np.array_equal(a, read_noise(data_dir / "nstdb", "ma", 250, 20.0, seed=1))
    assert not np.array_equal(a, read_noise(data_dir / "nstdb", "ma", 250, 20.0, seed=2))
    em = read_noise(data_dir / "nstdb", "em", 360, 25.0)  # 10 s of it, looped
    assert em.shape == (9000, 2) and np.array_equal(em[:3600], em[3600:7200])
    with pytest.raises(NoiseError, match="unknown noise"):
        read_noise(data_dir / "nstdb", "pink", 250, 1.0)


def test_a_plugin_with_known_answers_gets_the_known_scores(record):
    clean, beats, fs = record
    # every 10th beat missed, 5 false detections far from any beat, the rest 10 samples late
    kept = np.delete(beats, np.arange(0, len(beats), 10)) + 10
    false = np.array([int(beats[i] + (beats[i + 1] - beats[i]) / 2) for i in range(5, 10)])
    det = PythonDetector("known", lambda x, fs: np.concatenate([kept, false]))
    s = score_beats(beats, det(clean, fs), fs)
    assert s.tp == len(kept) and s.fn == len(beats) - len(kept) and s.fp == 5
    assert s.timing_ms == pytest.approx(10 * 1000 / fs)
    assert gross([s, s]).tp == 2 * s.tp
    xqrs = detector("xqrs")(clean, fs)
    assert score_beats(beats, xqrs, fs).se > 0.99


def _xqrs_script(path, symbols: str):
    """An external detector: XQRS on the record's lead, written with the symbols ``symbols``
    (a Python expression over the detections ``q``)."""
    path.write_text("import sys, wfdb\nfrom wfdb import processing\n"
                    "r = wfdb.rdrecord(sys.argv[1])\n"
                    "q = processing.xqrs_detect(r.p_signal[:, 0], r.fs, verbose=False)\n"
                    f"wfdb.wrann(sys.argv[1], 'qrs', q, symbol={symbols}, fs=r.fs)\n")
    return path


def test_an_external_command_detector_reads_and_writes_wfdb(record, tmp_path):
    clean, beats, fs = record
    script = _xqrs_script(tmp_path / "det.py", "['N'] * len(q)")
    det = CommandDetector("ext", f"{sys.executable} {script} {{record}}")
    assert score_beats(beats, det(clean, fs), fs).se > 0.99
    assert detector(f"cmd:{sys.executable} {script} {{record}}").name == sys.executable
    assert det.classify(clean, fs)[1] is None  # a QRS detector's N symbols are not classes


def test_an_external_classifier_gives_each_beat_its_class(record, tmp_path):
    clean, beats, fs = record
    script = _xqrs_script(tmp_path / "cls.py", "['V' if i % 3 == 0 else 'A' for i in range(len(q))]")
    samples, kinds = detector(f"classify:{sys.executable} {script} {{record}}").classify(clean, fs)
    assert len(samples) == len(kinds) > 50 and kinds[:3] == ["V", "S", "S"]
    with pytest.raises(DetectorError, match="must name the record"):
        detector("classify:mytool")


@pytest.mark.parametrize("answer, why", [(lambda x, fs: ([1, 2], ["N"]), "one symbol per sample"),
                                         (lambda x, fs: ([1, 2], ["N", "~"]), "not MIT-BIH beat symbols"),
                                         (lambda x, fs: ([2, 2], ["N", "V"]), "two beats at one sample")])
def test_a_malformed_classification_is_a_clear_error(record, answer, why):
    clean, _, fs = record
    with pytest.raises(DetectorError, match=why):
        PythonDetector("bad", answer).classify(clean, fs)
    samples, kinds = PythonDetector("ok", lambda x, fs: ([30, 10], ["V", "N"])).classify(clean, fs)
    assert list(samples) == [10, 30] and kinds == ["N", "V"]  # sorted together


@pytest.mark.parametrize("answer, why", [(lambda x, fs: [[1, 2], [3, 4]], "1-d list"),
                                         (lambda x, fs: ["a", "b"], "finite numbers"),
                                         (lambda x, fs: [1.5, 3.0], "whole numbers"),
                                         (lambda x, fs: [-5, 10], "must lie in"),
                                         (lambda x, fs: 1 / 0, "failed: ZeroDivisionError")])
def test_a_malformed_answer_is_a_clear_error(record, answer, why):
    clean, _, fs = record
    with pytest.raises(DetectorError, match=why):
        PythonDetector("bad", answer)(clean, fs)


def test_a_failing_command_is_a_clear_error(record, tmp_path):
    clean, _, fs = record
    with pytest.raises(DetectorError, match="exited with 3: boom"):
        CommandDetector("x", f"{sys.executable} -c \"import sys; print('boom', file=sys.stderr); sys.exit(3)\"")(clean, fs)
    with pytest.raises(DetectorError, match="wrote no annotation file"):
        CommandDetector("y", f"{sys.executable} -c pass")(clean, fs)
    with pytest.raises(DetectorError, match="unknown detector"):
        detector("magic")
