"""CLI commands that run on their own (no service): packaging a training run and plotting an ECG
from a record or from a published segment."""

from __future__ import annotations

import numpy as np
import pytest

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.segments import Segment
from tests.support import RECORDS
from twin_engine.ops.cli import main


def test_package_makes_a_model_that_generates_like_the_run(distilled_model_dir, tmp_path):
    out = tmp_path / "packaged"
    assert main(["package", str(distilled_model_dir), "--out", str(out), "--version", "test-1"]) == 0
    run, packaged = TwinModel.load(distilled_model_dir), TwinModel.load(out)
    assert packaged.meta.version == "test-1" and packaged.student_denoiser is not None
    assert (out / "model.safetensors").stat().st_size < (distilled_model_dir / "model.safetensors").stat().st_size
    base = np.ones((2, run.ibe.cfg.base_dim), np.float32) / np.sqrt(run.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    a, b = (m.generate(base, states, 4, 7, "distilled") for m in (run, packaged))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2  # weights stored in fp16


def test_plot_a_record_and_a_published_segment(data_dir, tmp_path):
    rec_png, seg_png, seg_json = tmp_path / "rec.png", tmp_path / "seg.png", tmp_path / "seg.json"
    assert main(["plot", str(data_dir / RECORDS[0]), "--out", str(rec_png)]) == 0
    t = np.arange(500) / 250
    samples = np.repeat(np.sin(2 * np.pi * 1.2 * t)[:, None], 12, 1).astype(np.float32)
    seg = Segment("bed-1", 3, 1.7e9, 250, tuple(f"L{i}" for i in range(12)), samples, {"heart_rate": 72},
                  "e-1", "v")
    seg_json.write_bytes(seg.to_json())
    assert main(["plot", str(seg_json), "--out", str(seg_png)]) == 0
    for png in (rec_png, seg_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_register_names_a_local_record_as_the_service_reads_it(data_dir, tmp_path, monkeypatch):
    """The service reads ``wfdb`` references from its own data_dir; a record named from the
    caller's working directory is sent relative to that directory, so both sides mean one file."""
    from twin_engine.config import Settings
    from twin_engine.ops.clients import _record_path

    settings = Settings(data_dir=data_dir)
    monkeypatch.chdir(data_dir.parent)
    assert _record_path(settings, f"data/{RECORDS[0]}") == RECORDS[0]
    assert _record_path(settings, str(data_dir / RECORDS[0])) == RECORDS[0]
    assert _record_path(settings, RECORDS[0]) == RECORDS[0]  # no such local file: as given
    (tmp_path / "own.hea").write_text("own 1 250 10\n")
    assert _record_path(settings, str(tmp_path / "own")) == str(tmp_path / "own")  # not in data_dir: the service refuses it


def test_render_writes_records_whose_annotations_a_detector_finds(data_dir, tmp_path):
    """``twin-engine render`` with the shipped model: every scheduled beat in the .atr file, the
    rhythm episodes where the scenario puts them, and XQRS (not ours) finds the beats there."""
    import json

    import numpy as np
    import wfdb
    import wfdb.processing as wp

    scenario = tmp_path / "alarms.toml"
    scenario.write_text(f'''
[[patient]]
id = "bed-1"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 70 }}

[[change]]
at = 10
patient = "bed-1"
rhythm = {{ name = "vt", rate = 190, duration = 6 }}

[[change]]
at = 20
patient = "bed-1"
rhythm = {{ name = "asystole", duration = 4 }}

[[change]]
at = 30
patient = "bed-1"
state = {{ statements = {{ AFIB = 1 }}, heart_rate = 120 }}
''')
    out = tmp_path / "db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    assert main(["--config", str(cfg), "render", str(scenario), "--out", str(out), "--seconds", "45"]) == 0
    rec = wfdb.rdrecord(str(out / "bed_1"))
    ann = wfdb.rdann(str(out / "bed_1"), "atr")
    assert rec.fs == 250 and rec.p_signal.shape == (45 * 250, 12)
    rhythms = [(s / 250, a) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True) if sym == "+"]
    assert [a for _, a in rhythms] == ["(N", "(VT", "(N", "(ASYS", "(N", "(AFIB"]
    assert [t for t, _ in rhythms][1::2] == [10.0, 20.0, 30.0]
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym != "+"])
    kinds = np.array([sym for sym in ann.symbol if sym != "+"])
    vt = (beats >= 10 * 250) & (beats < 16 * 250)
    assert set(kinds[vt]) == {"V"} and abs(vt.sum() - 6 * 190 / 60) <= 2
    assert not ((beats > 20 * 250) & (beats < 24 * 250)).any()
    found = wp.xqrs_detect(rec.p_signal[:, 1], fs=250, verbose=False)
    c = wp.compare_annotations(beats, found, int(0.15 * 250))
    assert c.sensitivity >= 0.97 and c.positive_predictivity >= 0.97, (c.sensitivity, c.positive_predictivity)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"][0]["beats"] == len(beats)

    bad = tmp_path / "bad.toml"
    bad.write_text(scenario.read_text().replace('rate = 190', 'rate = 400'))
    assert main(["--config", str(cfg), "render", str(bad), "--out", str(out)]) == 2


def test_render_writes_millivolts_a_references_own_or_the_amplitude_models(data_dir, tmp_path):
    """A twin of an mV reference (LUDB, CPSC2018) is drawn with that reference's QRS height in
    every lead, one of the z-scored PTB-XL subset at the amplitude model's scales; the record says
    mV and the manifest says which scales and where they came from."""
    import json

    import numpy as np
    import wfdb

    from models.amplitude import AmplitudeModel, lead_scales
    from models.conditions import CardiacState
    from models.data.preprocess import to_model_input
    from models.rhythm.render import BeatBank

    def qrs_heights(x: np.ndarray, fs: float) -> np.ndarray:  # the median beat's, as the rhythm bank measures
        return BeatBank.from_windows([to_model_input(x, fs, 250) * lead_scales(x, fs)], 250).scale

    refs = {"ludb": "ludb/data/1", "cpsc": "cpsc2018/A0002", "ptb": RECORDS[0]}
    scenario = tmp_path / "mv.toml"
    scenario.write_text('seconds = 20\n' + "".join(f'''
[[patient]]
id = "{pid}"
wfdb = "{ref}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 70 }}
''' for pid, ref in refs.items()) + '''
[[patient]]
id = "mit"
wfdb = "mitdb/100"
wfdb_start = 60
wfdb_seconds = 60
state = { statements = { SR = 1 }, heart_rate = 75 }
''')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    assert main(["--config", str(cfg), "render", str(scenario), "--out", str(tmp_path / "db")]) == 0
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert manifest["units"] == "mV"
    for r in manifest["records"]:
        rec = wfdb.rdrecord(str(tmp_path / "db" / r["record"]))
        assert rec.units == ["mV"] * 12
        scale = np.array(list(r["mv_scale"].values()))
        if r["record"] == "ptb":
            assert r["mv_source"] == "amplitude model"
            assert np.allclose(scale, AmplitudeModel.load().predict(CardiacState({"SR": 1.0}, 70)), rtol=1e-3)
            continue
        if r["record"] == "mit":  # MLII + V5: the two leads it has at its heights, ten estimated
            assert r["estimated_leads"] == [n for n in rec.sig_name if n not in ("II", "V5")]
            own = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampfrom=360 * 60, sampto=360 * 120)
            as12 = np.repeat(own.p_signal[:, :1], 12, axis=1)  # MLII in every lead, V5 in V5's
            as12[:, 10] = own.p_signal[:, 1]
            ratio = qrs_heights(rec.p_signal, rec.fs)[[1, 10]] / qrs_heights(as12, own.fs)[[1, 10]]
            assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
            continue
        assert r["estimated_leads"] == []
        own = wfdb.rdrecord(str(data_dir / refs[r["record"]]))
        assert r["mv_source"] == "reference QRS"
        # the twin's QRS height over its reference's, per lead (measured 0.89-1.04); in the
        # model's z-scores (no scale) a QRS is several units high, not about one mV
        ratio = qrs_heights(rec.p_signal, rec.fs) / qrs_heights(own.p_signal, own.fs)
        assert 0.9 <= np.median(ratio) <= 1.1 and ((ratio > 0.8) & (ratio < 1.25)).all(), (r["record"], ratio)


def test_render_at_a_pacer_test_rate_draws_each_pulse_where_the_pace_file_says(data_dir, tmp_path):
    """At ``fs`` above the model's rate a paced rhythm's stimuli are drawn as IEC pulses (here 700
    mV for 2 ms at 2 kHz: four samples) on every lead, 90 ms before each paced beat, listed in
    the .pace file; the beats file is at the same rate, and a rate out of range is refused."""
    import numpy as np
    import wfdb

    scenario = tmp_path / "pace.toml"
    scenario.write_text(f'''
seconds = 12
fs = 2000

[[patient]]
id = "pm"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 70 }}

[[change]]
at = 4
patient = "pm"
rhythm = {{ name = "paced", rate = 80, pulse_mv = 700, pulse_ms = 2 }}
''')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    out = tmp_path / "db"
    assert main(["--config", str(cfg), "render", str(scenario), "--out", str(out)]) == 0
    rec = wfdb.rdrecord(str(out / "pm"))
    pace = wfdb.rdann(str(out / "pm"), "pace")
    atr = wfdb.rdann(str(out / "pm"), "atr")
    assert rec.fs == 2000 and rec.p_signal.shape == (24000, 12) and set(rec.fmt) == {"24"}
    paced = np.array([s for s, sym in zip(atr.sample, atr.symbol, strict=True) if sym == "/"])
    assert len(paced) >= 9 and np.array_equal(pace.sample, paced - 180)  # 90 ms before R at 2 kHz
    assert set(pace.aux_note) == {"700mV 2ms"} and set(pace.symbol) == {"^"}
    for s in pace.sample:
        assert (rec.p_signal[s:s + 4] > 690).all() and (rec.p_signal[s + 4] < 10).all()
    assert (rec.p_signal[:4 * 2000] < 100).all()  # sinus before the change: no pulses

    assert main(["--config", str(cfg), "render", str(scenario), "--out", str(out), "--fs", "100"]) == 2
    scenario.write_text(scenario.read_text().replace("fs = 2000", "fs = 99999"))
    assert main(["--config", str(cfg), "render", str(scenario), "--out", str(out)]) == 2


def test_render_draws_a_tall_t_wave_asked_in_millivolts_and_leaves_the_qrs(data_dir, tmp_path):
    """``t_wave = 1.2`` (IEC 60601-2-27's tall T-wave test): lead II's median T wave is 1.2 mV,
    the P wave and QRS are the same samples as without it; play refuses it (render only)."""
    import asyncio

    import numpy as np
    import wfdb

    from twin_engine.config import Settings
    from twin_engine.ops.scenario import ScenarioError, load_scenario, play

    base = f'''
seconds = 20

[[patient]]
id = "bed-t"
wfdb = "{RECORDS[0]}"
state = {{ statements = {{ SR = 1 }}, heart_rate = 80 }}
'''
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    records = {}
    for name, extra in (("plain", ""), ("tall", "t_wave = 1.2\n")):
        sc = tmp_path / f"{name}.toml"
        sc.write_text(base + extra)
        assert main(["--config", str(cfg), "render", str(sc), "--out", str(tmp_path / name)]) == 0
        rec = wfdb.rdrecord(str(tmp_path / name / "bed_t"))
        ann = wfdb.rdann(str(tmp_path / name / "bed_t"), "atr")
        beats = [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym == "N" and 75 < s < len(rec.p_signal) - 125]
        records[name] = rec.p_signal, np.median(np.stack([rec.p_signal[s - 75:s + 125, 1] for s in beats]), 0)
    (_, plain_med), (_, tall_med) = records["plain"], records["tall"]
    t = tall_med[75 + 30:]  # from 120 ms after R
    assert abs(t[np.argmax(np.abs(t))] - 1.2) <= 0.1 and np.abs(plain_med[75 + 30:]).max() < 0.6
    # P and QRS to R + 80 ms; at 80 bpm the first 50 ms of this window (from R - 300 ms) are the
    # end of the beat before, whose taller T wave ends there (measured: up to 1e-3 mV)
    assert np.allclose(tall_med[13:75 + 20], plain_med[13:75 + 20], atol=1e-3)
    with pytest.raises(ScenarioError, match="render and stress only"):
        asyncio.run(play(Settings(data_dir=data_dir), load_scenario(tmp_path / "tall.toml")))
    (tmp_path / "bad.toml").write_text(base + "t_wave = 9\n")
    assert main(["--config", str(cfg), "render", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "b")]) == 2
