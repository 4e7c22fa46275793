"""A stream's rhythm layer: the patient's beat banks (the twin's own windows, made through the
shared batcher) and the track that draws each segment on the beat schedule (``models.rhythm``).

The model is asked for a bank once per morphology (a registration, a change of morphology
statements), not once per segment; the schedule takes a request whenever the rhythm a segment
is in differs from the last one asked (an event's rhythm, or the one its state implies, its
heart-rate ramp included).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from models.conditions import CardiacState
from models.rhythm import Beat, BeatSchedule, Episode, Rhythm
from models.rhythm.morphology import morphology_state, rhythm_of
from models.rhythm.render import BankError, BeatBank, BeatRenderer, bank_seed, bank_seeds, no_bank
from models.rhythm.track import RhythmTrack
from twin_engine.worker.generator import GenRequest

BANK_SAMPLES = 2560  # about 10 s of the twin: a dozen beats at 75 bpm, of which the bank keeps the alike
BANKS_KEPT = 4  # morphologies a stream keeps at hand (a change back and forth asks the model once)
# a restored stream whose time jumped past its schedule by more than this (downtime: it goes on
# from now) starts a new schedule there, rather than making every beat of the gap
GAP_S = 10.0

Submit = Callable[[GenRequest, float], Awaitable[np.ndarray]]


async def make_bank(submit: Submit, base: np.ndarray, state: CardiacState, seed: int, fs: int,
                    due: float) -> BeatBank:
    """The patient's beats in ``state``'s morphology, from ``BANK_SAMPLES`` of the twin made
    through the batcher (``submit``, by ``due``); made again with the next of ``bank_seeds``
    while they give too few clean beats.

    Raises:
        BankError: no seed gave beats enough.
    """
    first: BankError | None = None
    for s in bank_seeds(seed):
        x = await submit(GenRequest(base, morphology_state(state), None, BANK_SAMPLES, s), due)
        try:
            return await asyncio.to_thread(BeatBank.from_windows, [x], fs)  # XQRS: ~20 ms
        except BankError as exc:
            first = first or exc
    raise no_bank(first)


def look_key(state: CardiacState) -> str:
    """Which bank a state is drawn from: its morphology statements, demographics and, where it
    says, its contrastive guidance (left out otherwise, so that saved tracks keep their key)."""
    m = morphology_state(state)
    key = [sorted(m.statements.items()), None if m.age != m.age else m.age, m.sex]
    return json.dumps(key if m.contrast is None else [*key, m.contrast])


class StreamRhythm:
    """Args:
        patient_id: whose stream (its seed).
        base: the patient's base vector.
        fs: the stream's rate.
        submit: generation through the worker's batcher, ``(request, due) -> samples``.
        saved: the track after the last published segment (``RhythmTrack.to_dict``), if any.
    """

    def __init__(self, patient_id: str, base: np.ndarray, fs: int, submit: Submit, saved: dict | None) -> None:
        self.base, self.fs, self.submit = base, fs, submit
        self.seed = bank_seed(patient_id)
        self._saved = saved
        # each morphology's bank, or why none could be cut (not tried again: each try is ~10 s of the twin)
        self._banks: OrderedDict[str, BeatBank | str] = OrderedDict()
        self.track: RhythmTrack | None = None
        self._lapsed = False  # segments went out without beats (``lapse``)
        self.qrs_power: np.ndarray | None = None  # per lead, of the bank the last window was drawn from

    async def _bank(self, state: CardiacState, due: float) -> BeatBank:
        key = look_key(state)
        if key not in self._banks:
            try:
                self._banks[key] = await make_bank(self.submit, self.base, state, self.seed, self.fs, due)
            except BankError as exc:
                self._banks[key] = str(exc)
            while len(self._banks) > BANKS_KEPT:
                self._banks.popitem(last=False)
        self._banks.move_to_end(key)
        bank = self._banks[key]
        if isinstance(bank, str):
            raise BankError(bank)
        return bank

    def lapse(self) -> None:
        """A segment went out without beats (its morphology's bank could not be cut): the
        schedule begins again where beats can be drawn, as after downtime (a timed rhythm named
        before is over)."""
        self.track, self._saved, self._lapsed = None, None, True

    async def window(self, t0: float, n: int, state: CardiacState, event_id: str | None, named: Rhythm | None,
                     due: float) -> tuple[np.ndarray, list[Beat], list[Episode]]:
        """The samples of the segment from stream time ``t0`` in ``state`` (and the rhythm the
        event ``event_id`` named, if it named one), its beats and the episodes it overlaps.

        Raises:
            BankError: the twin's windows give no beats to draw (the caller streams the model's
                own windows instead and says why).
        """
        bank = await self._bank(state, due)
        rhythm = named or rhythm_of(state)
        asked = json.dumps([event_id, rhythm.to_dict()], sort_keys=True)
        look = look_key(state)
        begun = self.track is not None or self._saved is not None or self._lapsed  # it drew beats before
        if self.track is None and self._saved is not None:
            try:
                self.track = RhythmTrack.from_dict(self._saved, BeatRenderer(bank, self.seed))
                self.track.look = look  # drawn with the bank of now
            except ValueError:
                pass  # a damaged record: the schedule starts again here
        if self.track is not None and t0 - self.track.schedule.cursor > GAP_S:
            self.track, self._saved = None, None  # the stream's time jumped past it (downtime): it goes on from now
        if self.track is None:  # a schedule begun again mid-stream holds no timed rhythm named before: it is over
            first = rhythm_of(state) if begun and rhythm.duration is not None else rhythm
            self.track = RhythmTrack(BeatSchedule(first, t0, self.seed), BeatRenderer(bank, self.seed))
            self.track.asked, self.track.look = asked, look
        if self.track.look != look:
            self.track.morph(t0, bank)
            self.track.look = look
        if self.track.asked != asked:
            self.track.schedule.request(rhythm, t0)
            self.track.asked = asked
        x, beats, episodes = self.track.window(t0, n)
        self.track.schedule.forget(t0 - 60.0)  # the record a segment carries stays small
        self.qrs_power = bank.scale.astype(np.float64) ** 2 / 8.0  # nst's S: (QRS peak-to-peak)^2 / 8
        return x, beats, episodes
