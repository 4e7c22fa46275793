"""The rhythm layer: where every beat is and what kind it is, decided explicitly.

``beats`` holds the ground-truth records (``Beat``, ``Episode``) and their MIT-BIH codes;
``programs`` the rhythm programs (sinus with heart-rate variability, bradycardia, tachycardia,
AF, atrial flutter, PVC and PAC patterns, VT, pause, asystole, ventricular flutter/fibrillation),
one signature for all and one registry of names; ``schedule`` composes a stream's rhythm
requests into beats window by window, the same beats however the stream is cut into windows.
"""

from models.rhythm.beats import (
           BEAT_KINDS,
           BEAT_SYMBOLS,
           MIT_KIND,
           MIT_RHYTHM,
           MIT_SYMBOL,
           Beat,
           Episode,
)
from models.rhythm.programs import RHYTHMS, Rhythm, RhythmError, rhythm_names
from models.rhythm.schedule import BeatSchedule

__all__ = ["BEAT_KINDS", "BEAT_SYMBOLS", "MIT_KIND", "MIT_RHYTHM", "MIT_SYMBOL", "RHYTHMS", "Beat", "BeatSchedule", "Episode", "Rhythm",
           "RhythmError", "rhythm_names"]
