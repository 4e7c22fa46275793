"""Ground truth of a rhythm: beats (time and class) and rhythm episodes, with the codes
MIT-BIH annotation files use, so that ``wfdb.rdann``, ``bxb`` and ``epicmp`` read them."""

from __future__ import annotations

from dataclasses import dataclass, field

# beat classes (AAMI EC57's groups) and the MIT-BIH symbol each is written with
BEAT_KINDS = {"N": "normal", "V": "ventricular ectopic", "S": "supraventricular ectopic", "F": "fusion",
              "P": "paced", "Q": "unclassifiable"}
MIT_SYMBOL = {"N": "N", "V": "V", "S": "A", "F": "F", "P": "/", "Q": "Q"}
# every MIT-BIH beat symbol (the others mark rhythm changes, noise, comments) and the class each
# reads as (AAMI EC57's groups, paced apart; unlisted beat symbols: Q)
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ")
MIT_KIND = {**dict.fromkeys("NLRBej", "N"), **dict.fromkeys("AaJS", "S"), **dict.fromkeys("VE", "V"), "F": "F",
            "/": "P"}
# rhythm names -> the aux note of a rhythm-change annotation (MIT-BIH's; "(ASYS" is ours: MIT-BIH
# has no asystole episodes, and PhysioNet/CinC 2015 names the alarm so)
# the episode of a stream drawn without beats (its morphology gave no bank): no rhythm code; the
# WFDB export marks it unreadable ('~', subtype -1: WFDB's code for unreadable signal)
UNANNOTATED = "unannotated"
MIT_RHYTHM = {"sinus": "(N", "sinus_brady": "(SBR", "sinus_tachy": "(N", "afib": "(AFIB", "aflutter": "(AFL",
              "pvc": "(N", "bigeminy": "(B", "trigeminy": "(T", "pac": "(N", "svt": "(SVTA", "vt": "(VT", "pause": "(N", "paced": "(P",
              "asystole": "(ASYS", "vf": "(VFL"}


@dataclass(frozen=True)
class Beat:
    """One beat: its R-peak time (stream seconds) and class (a key of ``BEAT_KINDS``).
    ``anchor``: for a sinus beat, the sinus node's own time before beat-to-beat jitter (the
    next beat is timed from it, so jitter does not accumulate into the rate)."""

    time: float
    kind: str = "N"
    anchor: float | None = field(default=None, compare=False)

    @property
    def symbol(self) -> str:
        return MIT_SYMBOL[self.kind]


@dataclass(frozen=True)
class Episode:
    """A rhythm from ``start`` to ``end`` (stream seconds; ``end`` None: still going)."""

    rhythm: str
    start: float
    end: float | None = None

    @property
    def aux(self) -> str:
        """The aux note its rhythm-change annotation carries ("" for ``UNANNOTATED``)."""
        return MIT_RHYTHM.get(self.rhythm, "")
