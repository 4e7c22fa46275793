"""The renderer: a schedule drawn and detected back by a detector we did not write, the same
samples and beats however a stream is cut, episodes without beats, a morphology change that
leaves earlier beats alone, and a refusal for windows without beats."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb.processing as wp

from models.data.ptbxl import PTBXL
from models.rhythm import BeatSchedule, Rhythm
from models.rhythm.render import REACH_AFTER_S, REACH_BEFORE_S, BankError, BeatBank, BeatRenderer
from models.rhythm.track import RhythmTrack

FS = 250


@pytest.fixture(scope="module")
def bank(data_dir) -> BeatBank:
    """Beats cut from two real 10 s PTB-XL records of one patient's kind (sinus, z-scored)."""
    db = PTBXL(data_dir / "ptbxl-subset")
    sig = db.record(db.ecg_ids[0]).signal
    return BeatBank.from_windows([sig[:1250], sig[1250:2500]], FS)


def _stream(bank: BeatBank, rhythm: Rhythm, seconds: float, window: float, seed: int = 7):
    track = RhythmTrack(BeatSchedule(rhythm, 0.0, seed), BeatRenderer(bank, seed))
    xs, beats = [], []
    n_total = int(seconds * FS)
    done = 0
    while done < n_total:
        n = min(int(round(window * FS)), n_total - done)
        x, b, _ = track.window(done / FS, n)
        xs.append(x)
        beats += b
        done += n
    return np.concatenate(xs), beats


@pytest.mark.parametrize("rhythm", [Rhythm("sinus", rate=40), Rhythm("sinus", rate=75), Rhythm("sinus_tachy", rate=150),
                                    Rhythm("svt", rate=220), Rhythm("afib", rate=110),
                                    Rhythm("pvc", pattern="bigeminy", rate=70), Rhythm("vt", rate=200),
                                    Rhythm("paced", rate=70)])
def test_the_schedule_is_detected_back_by_xqrs(bank, rhythm):
    x, beats = _stream(bank, rhythm, 60.0, 2.0)
    ref = np.array([round(b.time * FS) for b in beats])
    found = wp.xqrs_detect(x[:, 1].astype(np.float64), fs=FS, verbose=False)
    c = wp.compare_annotations(ref, found, int(0.15 * FS))
    assert c.sensitivity >= 0.98 and c.positive_predictivity >= 0.98, (rhythm, c.sensitivity, c.positive_predictivity)
    rate = 60 * (len(beats) - 1) / (beats[-1].time - beats[0].time)
    assert abs(rate - rhythm.validated().rate) <= 2.0


@pytest.mark.parametrize("r", [Rhythm("pvc", pattern="trigeminy", rate=90), Rhythm("paced", rate=120)])
def test_cuts_change_neither_samples_nor_beats(bank, r):
    # paced beats fall exactly on samples (120 bpm: every 125th): where a hard edge once made seams differ
    one, b1 = _stream(bank, r, 20.0, 20.0)
    for window in (1.0, 0.348):  # seams everywhere, also mid-QRS
        x, b = _stream(bank, r, 20.0, window)
        np.testing.assert_allclose(x, one, atol=1e-5)
        assert [(q.time, q.kind) for q in b] == [(q.time, q.kind) for q in b1]  # none lost, none doubled
    assert len({q.time for q in b1}) == len(b1)


def test_paced_beats_are_regular_with_a_pacing_spike_before_each(bank):
    from models.rhythm.render import PACE_LEAD_S

    x, beats = _stream(bank, Rhythm("paced", rate=75), 20.0, 1.0)
    assert {b.kind for b in beats} == {"P"} and np.allclose(np.diff([b.time for b in beats]), 0.8)
    for b in beats[1:-1]:
        at = int(round((b.time - PACE_LEAD_S) * FS))
        jump = np.abs(np.diff(x[at - 3:at + 3, 1])).max()
        assert jump > 2 * np.abs(np.diff(x[at - 12:at - 4, 1])).max()  # a step far steeper than the ECG around it


def test_vf_has_no_beats_and_asystole_is_flat(bank):
    sched = BeatSchedule(Rhythm("sinus", rate=70), 0.0, 1)
    sched.request(Rhythm("vf", duration=5.0), 5.0)
    sched.request(Rhythm("asystole", duration=5.0), 15.0)
    track = RhythmTrack(sched, BeatRenderer(bank, 1))
    x, beats, episodes = track.window(0.0, 25 * FS)
    times = np.array([b.time for b in beats])
    assert not ((times > 5.0) & (times < 10.0)).any() and not ((times > 15.0) & (times < 20.0)).any()
    assert {"vf", "asystole"} <= {e.rhythm for e in episodes}
    vf = x[int(6 * FS):int(9 * FS)]
    assert vf.std() > 0.1 * bank.scale.mean() / 4  # waves, not a line
    last_before = times[times < 15.0].max()
    flat = x[int((last_before + REACH_AFTER_S) * FS) + 1:int((20 - REACH_BEFORE_S) * FS)]
    assert np.abs(flat).max() == 0.0


def test_a_new_morphology_leaves_the_beats_before_it(bank):
    other = BeatBank(-bank.normal, -bank.ventricular, bank.fs, bank.rr, bank.scale)
    r = Rhythm("sinus", rate=60)
    plain, beats = _stream(bank, r, 20.0, 20.0)
    track = RhythmTrack(BeatSchedule(r, 0.0, 7), BeatRenderer(bank, 7))
    track.morph(10.0, other)
    x, b, _ = track.window(0.0, 20 * FS)
    before = max(q.time for q in beats if q.time < 10.0)
    cut = int((before + REACH_AFTER_S) * FS)
    np.testing.assert_allclose(x[:cut], plain[:cut], atol=1e-6)
    after = min(q.time for q in beats if q.time >= 10.0)
    i = int(round(after * FS))
    assert np.sign(x[i, 1]) == -np.sign(plain[i, 1])


def test_windows_without_beats_are_refused(bank):
    with pytest.raises(BankError, match="whole beats"):
        BeatBank.from_windows([np.zeros((1024, 12), np.float32)], FS)



def test_a_bank_is_cut_on_another_lead_where_lead_ii_misreads(data_dir):
    """The shipped model's bundle-branch-block twin of held-out ecg 1492 (19974 under
    -identity, 946 under cfg13; a new model misreads another one): fewer than 6 of
    the beats XQRS finds on its lead II are alike; the bank comes from a lead that reads them,
    and its beats are detected back where the schedule put them."""
    from models.conditions import CardiacState
    from models.rhythm.morphology import BANK_WINDOWS, morphology_state
    from models.twin import TwinModel
    from twin_engine.config import REPO_ROOT

    model = TwinModel.load(REPO_ROOT / "models" / "default")
    rec = PTBXL(data_dir / "ptbxl-subset").record(1492)
    state = morphology_state(CardiacState.from_scp(rec.scp_codes, 75.0, rec.age, rec.sex, model.meta.vocab))
    windows = list(model.generate(np.stack([model.encode([rec.signal])] * BANK_WINDOWS), [state] * BANK_WINDOWS,
                                  steps=8, seed=[1010 + i for i in range(BANK_WINDOWS)]))
    try:
        alike = BeatBank._cut(windows, FS, 12, 1)[1]
    except BankError:
        alike = 0
    assert alike < 6
    bank = BeatBank.from_windows(windows, FS)
    assert len(bank.normal) >= 6
    x, beats = _stream(bank, Rhythm("sinus", rate=75), 30.0, 2.0)
    ref = np.array([round(b.time * FS) for b in beats])
    found = wp.xqrs_detect(x[:, 1].astype(np.float64), fs=FS, verbose=False)
    c = wp.compare_annotations(ref, found, int(0.15 * FS))
    assert c.sensitivity >= 0.98 and c.positive_predictivity >= 0.98, (c.sensitivity, c.positive_predictivity)


def test_a_bank_that_cannot_be_cut_is_drawn_again_with_another_seed(data_dir):
    """The shipped model's CRBBB twin of held-out ecg 1321 at seed 2013 gives fewer than 2 alike
    beats (one of 3 such banks among 680 of 40 patients); ``bank_for`` draws it again with the
    next of ``bank_seeds`` and cuts that."""
    from models.conditions import CardiacState
    from models.rhythm.morphology import BANK_WINDOWS, bank_for, morphology_state
    from models.rhythm.render import bank_seeds
    from models.twin import TwinModel
    from twin_engine.config import REPO_ROOT

    model = TwinModel.load(REPO_ROOT / "models" / "default")
    base = model.encode([PTBXL(data_dir / "ptbxl-subset").record(1321).signal])
    state = CardiacState({"SR": 1.0, "CRBBB": 1.0}, 70.0)

    def windows(seed: int) -> list[np.ndarray]:
        return list(model.generate(np.stack([base] * BANK_WINDOWS), [morphology_state(state)] * BANK_WINDOWS,
                                   steps=8, seed=[seed + i for i in range(BANK_WINDOWS)], contrast=0.0))

    first, second = bank_seeds(2013)[:2]
    with pytest.raises(BankError, match="alike"):
        BeatBank.from_windows(windows(first), FS)
    bank = bank_for(model, base, state, seed=2013)
    again = BeatBank.from_windows(windows(second), FS)
    np.testing.assert_array_equal(bank.normal, again.normal)
