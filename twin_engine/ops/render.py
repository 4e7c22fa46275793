"""``twin-engine render SCENARIO --out DIR``: a test database made to order, without a broker.

Each patient of a scenario file becomes a WFDB record (12 leads at the model's rate) and an
annotation file in MIT-BIH's codes with every beat (N, V, A, F, /, Q) and rhythm episode ((N,
(AFIB, (VT, ...), drawn by the rhythm layer (``models.rhythm``) from the twin's own beats. State
changes take effect at their times; a change of morphology statements draws the beats from then
on from a new bank, a rhythm (named, or implied by the state) takes over the schedule, a
heart-rate ramp moves the rate each second of its ``transition``, a removal ends the record.
The scenario's artifacts (``[[artifact]]``) are then drawn over the clean record, each marked in
the annotation file by a noise annotation (``~``, its kind, SNR and leads in the aux note) where
it begins and one (``~`` ``clean``) where it ends; ``manifest.json`` lists for each record its
changes, episodes and artifacts (with the SNR measured back per lead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from models.amplitude import to_mv
from models.conditions import CardiacState, guided_if_new
from models.rhythm.annotations import write_annotations, write_rows
from models.rhythm.morphology import bank_for, morphology_state, rhythm_of
from models.rhythm.pacing import MAX_FS, PACE_SYMBOL, add_pulses, resample, stimuli
from models.rhythm.programs import RHYTHMS, Rhythm
from models.rhythm.render import LEAD_II, BeatBank, BeatRenderer, bank_seed
from models.rhythm.schedule import BeatSchedule
from models.rhythm.track import RhythmTrack
from models.stress.artifacts import Artifact, apply
from models.twin import TwinModel
from stream.events import Event
from stream.segments import GAIN, noise_note, quantize
from twin_engine.config import Settings
from twin_engine.ops.scenario import Scenario, ScenarioError
from twin_engine.worker.references import Reference, References
from twin_engine.worker.sinks import record_name

WINDOW_S = 1.0  # rendered (and ramped) a second at a time; samples do not depend on it
TAIL_S = 30.0  # rendered past a scenario's last change when no length is given


@dataclass(frozen=True)
class Rendered:
    """One record written: its path (without extension), length and what it holds."""

    path: Path
    seconds: float
    beats: int
    episodes: list[str]
    truth: dict  # what the manifest says of it: changes, episodes, artifacts


def scenario_seconds(scenario: Scenario) -> float:
    """How long records run when not told: the scenario's ``seconds``, or past its last change
    or artifact by ``TAIL_S``."""
    if scenario.seconds is not None:
        return scenario.seconds
    ends = [c.at for c in scenario.changes] + [a.end for arts in scenario.artifacts.values() for a in arts]
    return max(ends, default=0.0) + TAIL_S


def render_scenario(settings: Settings, model: TwinModel, scenario: Scenario, out: Path,
                    seconds: float | None = None, fs: int | None = None) -> list[Rendered]:
    """Write every patient of ``scenario`` to ``out``; returns what was written.

    Args:
        seconds: each record's length (default: ``scenario_seconds``).
        fs: the records' rate (default: the scenario's ``fs``, else the model's); above the
            model's, each pacing stimulus is drawn as its pulse (``models.rhythm.pacing``).

    Raises:
        EventError: a reference the service would refuse (the message says why).
        BankError: the twin gave too few clean beats for a patient's morphology.
        ScenarioError: an output rate out of range.
    """
    out = Path(out)
    seconds = scenario_seconds(scenario) if seconds is None else float(seconds)
    fs_out = int(fs or scenario.fs or model.meta.fs)
    if not model.meta.fs <= fs_out <= MAX_FS:
        raise ScenarioError(f"the output rate must be {model.meta.fs}..{MAX_FS} Hz, got {fs_out}")
    out.mkdir(parents=True, exist_ok=True)
    refs = References(settings, model)
    written = []
    for reg in scenario.registrations:
        changes = [c for c in scenario.changes if c.event.patient_id == reg.patient_id]
        written.append(_render_patient(model, refs.read(reg.reference, reg.state or CardiacState()), reg,
                                       [(c.at, c.event) for c in changes], seconds, out,
                                       scenario.artifacts.get(reg.patient_id, []), settings.data_dir / "nstdb",
                                       fs_out, scenario.t_waves.get(reg.patient_id), settings.contrast_guidance,
                                       settings.contrast_new_morphology))
    (out / "manifest.json").write_text(json.dumps(
        {"seconds": seconds, "fs": fs_out, "units": "mV", "model_version": model.meta.version,
         "records": [{"record": r.path.name, "seconds": r.seconds, "beats": r.beats, **r.truth}
                     for r in written]}, indent=1))
    return written


def _rhythm(ev: Event, state: CardiacState) -> Rhythm:
    return ev.rhythm if ev.rhythm is not None else rhythm_of(state)


def _render_patient(model: TwinModel, ref: Reference, reg: Event, changes: list[tuple[float, Event]],
                    seconds: float, out: Path, artifacts: list[Artifact], nstdb: Path, fs_out: int,
                    t_wave: float | None = None, contrast: bool = False, new_morphology: bool = True) -> Rendered:
    fs, seed, base = model.meta.fs, bank_seed(reg.patient_id), ref.base
    state = reg.state or CardiacState()
    registered = dict(state.statements)  # as the service keeps them
    first = bank_for(model, base, state, seed, contrast=contrast)
    ref = ref.calibrated(first)  # a reference in mV: the twin's QRS at its height, from its own beats

    def tall(b: BeatBank) -> BeatBank:
        # a tall T wave asked in mV: in the bank's z-scores, lead II's scale divides it
        return b if t_wave is None else b.with_t_wave(t_wave / float(ref.mv_scale[LEAD_II]))

    def bank(s: CardiacState, bank_seed_: int) -> BeatBank:
        return tall(bank_for(model, base, s, bank_seed_, contrast=contrast))

    end = next((at for at, ev in changes if ev.type == "remove"), seconds)
    end = min(end, seconds)
    def guided(s: CardiacState) -> dict:  # the manifest marks a state drawn with guidance
        return {"contrast": True} if model.meta.guides(s, contrast) else {}

    asked = [{"at": 0.0, **_rhythm(reg, state).to_dict(), **guided(state)}]
    schedule = BeatSchedule(_rhythm(reg, state), 0.0, seed)
    renderer = BeatRenderer(tall(first), seed, pace_footprint=fs_out == fs)
    morph = morphology_state(state)
    # every request is known up front: each holds from its own time exactly
    for at, ev in changes:
        if ev.type != "condition" or at >= end:
            continue
        asked_state = ev.state
        if asked_state is not None and new_morphology:  # as the service's ``contrast_new_morphology``
            asked_state = guided_if_new(asked_state, registered, model.meta.contrast)
        if asked_state is not None and morphology_state(asked_state) != morph:
            morph = morphology_state(asked_state)
            renderer.morph(at, bank(asked_state, seed + int(at * 1000)))
        new = asked_state or state
        target = _rhythm(ev, new)
        ramp = ev.transition_seconds if ev.rhythm is None and RHYTHMS[target.name].program is \
            RHYTHMS["sinus"].program else 0.0
        steps = max(1, int(ramp // WINDOW_S))
        for k in range(1, steps + 1) if ramp else ():  # a sinus rate ramped second by second
            hr = state.heart_rate + (new.heart_rate - state.heart_rate) * k / steps
            schedule.request(rhythm_of(CardiacState(new.statements, hr)), at + (k - 1) * WINDOW_S)
        if not ramp:
            schedule.request(target, at)
        asked.append({"at": at, **target.to_dict(), **({"transition": ramp} if ramp else {}), **guided(new)})
        state = new
    track = RhythmTrack(schedule, renderer)
    n_total = int(round(end * fs))
    chunks, beats = [], []
    step = int(WINDOW_S * fs)
    for s0 in range(0, n_total, step):
        x, b, _ = track.window(s0 / fs, min(step, n_total - s0))
        chunks.append(x)
        beats += b
    signal = np.concatenate(chunks) if chunks else np.zeros((0, len(model.meta.leads)), np.float32)
    episodes = schedule.episodes(end)
    arts = [a for a in artifacts if a.start < end]
    measured: list[dict] = []
    if arts:
        normal = np.array([int(round(b.time * fs)) for b in beats if b.kind == "N"] or
                          [int(round(b.time * fs)) for b in beats], int)
        signal, measured = apply(signal, fs, normal, arts, seed, nstdb)
    signal = to_mv(signal, ref.mv_scale)  # drawn in the model's z-scores (SNRs are per lead: kept)
    pulses = []
    if fs_out != fs:
        signal = resample(signal, fs, fs_out)
        pulses = stimuli(beats, asked, episodes, end)
        signal = add_pulses(signal, fs_out, pulses)
    name = record_name(reg.patient_id)
    _write_record(out, name, signal, fs_out, model.meta.leads, wide=fs_out != fs)
    leads = model.meta.leads
    noise_rows = []
    for a in arts:
        note = noise_note(a.kind, a.snr, a.named_leads(leads))
        noise_rows += [(int(round(a.start * fs_out)), "~", note),
                       (min(int(round(a.end * fs_out)), len(signal) - 1), "~", "clean")]
    write_annotations(name, out, fs_out, 0.0, beats, episodes, extra=noise_rows)
    if pulses:
        write_rows(name, out, [(int(round(t * fs_out)), PACE_SYMBOL, f"{mv:g}mV {ms:g}ms") for t, mv, ms in pulses
                               if t >= 0], "pace", fs_out)
    truth = {"mv_scale": dict(zip(leads, (round(float(v), 4) for v in ref.mv_scale), strict=True)),
             "mv_source": ref.mv_source, "estimated_leads": list(ref.estimated), "pacing_pulses": len(pulses),
             "t_wave_mv": t_wave, "changes": asked,
             "episodes": [{"rhythm": e.rhythm, "aux": e.aux, "start": e.start, "end": e.end} for e in episodes],
             "artifacts": [{**a.to_dict(leads), "end": min(a.end, end),
                            "measured_snr_db": {leads[j]: v for j, v in m.items()}}
                           for a, m in zip(arts, measured or [{}] * len(arts), strict=True)]}
    return Rendered(out / name, end, len(beats), [f"{e.rhythm}@{e.start:g}" for e in episodes], truth)


def _write_record(out: Path, name: str, signal: np.ndarray, fs: int, leads: tuple[str, ...], wide: bool = False) -> None:
    """WFDB record in mV at the stream's own gain: 16-bit as the service's WFDB sink writes, or
    (``wide``) 24-bit, whose +-8,388 mV carry IEC's largest pacing pulse (700 mV)."""
    n = len(leads)
    if wide:
        d, fmt = np.clip(np.round(signal * GAIN), -(2 ** 23 - 1), 2 ** 23 - 1).astype(np.int32), "24"
    else:
        d, fmt = quantize(signal), "16"
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=list(leads), d_signal=d, fmt=[fmt] * n,
                adc_gain=[GAIN] * n, baseline=[0] * n, write_dir=str(out))
