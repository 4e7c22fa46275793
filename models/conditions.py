"""Cardiac state as model input: SCP statements with intensities plus heart rate, age and sex.

No text model: each statement is a learned token. The vocabulary is part of a checkpoint's
config, so a model trained with a longer list still loads and an unknown code is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

# The statements the twin can be asked for (PTB-XL SCP codes).
VOCAB: tuple[str, ...] = (
    "NORM", "SR", "AFIB", "AFLT", "STACH", "SBRAD", "SARRH", "PVC", "PAC", "1AVB",
    "CLBBB", "CRBBB", "LAFB", "IRBBB", "LVH", "IMI", "ASMI", "ISC_", "STD_", "NDT",
)
CONTINUOUS = ("heart_rate", "age", "sex")


class ConditionError(ValueError):
    """A requested state the model cannot represent (unknown code, out-of-range value)."""


@dataclass(frozen=True)
class CardiacState:
    """A target state: statements -> intensity in [0, 1], heart rate in bpm, demographics."""

    statements: dict[str, float] = field(default_factory=lambda: {"NORM": 1.0, "SR": 1.0})
    heart_rate: float = 70.0
    age: float = float("nan")
    sex: int = -1  # PTB-XL coding: 0 male, 1 female; -1 unknown
    # rendered with the model's contrastive guidance (``ModelMeta.contrast_for``) or not; None: as
    # the service is set (``contrast_guidance``). Not a model input: how strongly to draw the state
    contrast: bool | None = None

    def validate(self, vocab: tuple[str, ...] = VOCAB) -> CardiacState:
        for code, v in self.statements.items():
            if code not in vocab:
                raise ConditionError(f"unknown statement {code!r}; known: {', '.join(vocab)}")
            if not (0.0 <= float(v) <= 1.0):
                raise ConditionError(f"intensity of {code} must be in [0, 1], got {v}")
        if not (20.0 <= self.heart_rate <= 250.0):
            raise ConditionError(f"heart_rate must be 20-250 bpm, got {self.heart_rate}")
        if self.sex not in (-1, 0, 1):
            raise ConditionError(f"sex must be 0, 1 or -1, got {self.sex}")
        if self.contrast is not None and not isinstance(self.contrast, bool):
            raise ConditionError(f"contrast must be true, false or absent, got {self.contrast!r}")
        if not math.isnan(self.age) and not 0.0 <= self.age <= 300.0:  # PTB-XL writes 300 for over 89
            raise ConditionError(f"age must be 0-300 years or absent, got {self.age}")
        return self

    def with_contrast(self, default: bool) -> bool:
        """Whether to draw this state with contrastive guidance: as it says, else ``default``
        (the service's ``contrast_guidance``, a caller's choice)."""
        return default if self.contrast is None else self.contrast

    @staticmethod
    def from_scp(scp_codes: dict[str, float], heart_rate: float, age: float, sex: int,
                 vocab: tuple[str, ...] = VOCAB) -> CardiacState:
        """From PTB-XL's ``scp_codes`` (likelihood 0-100; 0 on rhythm codes means 'stated')."""
        st = {c: (v / 100.0 if v > 0 else 1.0) for c, v in scp_codes.items() if c in vocab}
        return CardiacState(st, float(heart_rate), float(age), int(sex))


# never guided by default: 1AVB is drawn well alone (judge AUROC 0.94 against a target of 0.88),
# and guided its P waves grow until detectors count them (10 normal patients asked for 1AVB:
# XQRS +P 100 -> 92.3%, one bank of 10 not cut; docs/RHYTHM.md)
UNGUIDED_BY_DEFAULT = frozenset({"1AVB"})


def guided_if_new(state: CardiacState, registered: dict[str, float] | None, weighted: Iterable[str]) -> CardiacState:
    """``state`` asking for contrastive guidance where it adds a weighted morphology statement
    that the patient's registration state lacked, and says nothing itself; else as it is.

    A twin in the state its reference shows is drawn realistically without guidance, and
    overdrawn with it (FID to real 3.4 -> 9.4 over 183 held-out twins); a state the reference
    does not show is where the model draws too little (CLBBB judge AUROC 0.75, real 1.00).

    Args:
        registered: the statements the patient was registered with (None: not known).
        weighted: the statements the model has a contrast weight for (``ModelMeta.contrast``);
            those of ``UNGUIDED_BY_DEFAULT`` are left out.
    """
    if state.contrast is not None or registered is None:
        return state
    weighted = set(weighted) - UNGUIDED_BY_DEFAULT
    if any(v > 0 and c in weighted and registered.get(c, 0.0) <= 0 for c, v in state.statements.items()):
        return replace(state, contrast=True)
    return state


def normal_counterpart(state: CardiacState) -> CardiacState:
    """``state`` with its statements replaced by a normal ECG in sinus rhythm (rate and
    demographics kept): what contrastive guidance steers away from."""
    return replace(state, statements={"NORM": 1.0, "SR": 1.0})


def encode_states(states: list[CardiacState], vocab: tuple[str, ...] = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """(intensities [B, K], continuous [B, 4]) float32; continuous = hr, age, sex, age-known."""
    inten = np.zeros((len(states), len(vocab)), np.float32)
    cont = np.zeros((len(states), 4), np.float32)
    index = {c: i for i, c in enumerate(vocab)}
    for b, s in enumerate(states):
        for code, v in s.statements.items():
            inten[b, index[code]] = v
        cont[b, 0] = (s.heart_rate - 75.0) / 25.0
        known = not math.isnan(s.age)
        cont[b, 1] = (s.age - 60.0) / 20.0 if known else 0.0
        cont[b, 2] = {0: -1.0, 1: 1.0}.get(s.sex, 0.0)
        cont[b, 3] = 1.0 if known else 0.0
    return inten, cont
