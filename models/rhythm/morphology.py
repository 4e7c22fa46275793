"""What the twin draws for the rhythm layer: the patient's beats in the morphology asked for, and
the rhythm a cardiac state implies when no rhythm is named.

A state's rhythm statements (AFIB, AFLT, STACH, SBRAD, SARRH, PVC, PAC) and its heart rate go to
the rhythm layer; its other statements (bundle-branch blocks, hypertrophy, infarction, ST-T) and
the demographics stay with the model, which draws them in sinus rhythm at ``BANK_RATE``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.conditions import CardiacState
from models.rhythm.programs import Rhythm
from models.rhythm.render import BANK_RATE, BankError, BeatBank, bank_seeds, no_bank

RHYTHM_STATEMENTS = frozenset({"AFIB", "AFLT", "STACH", "SBRAD", "SARRH", "PVC", "PAC", "SR"})
BANK_WINDOWS = 3  # 3 windows of 4 s at 75 bpm: about 12 beats, of which the bank keeps the alike


def morphology_state(state: CardiacState) -> CardiacState:
    """``state`` with its rhythm statements replaced by sinus rhythm, at ``BANK_RATE``."""
    statements = {c: v for c, v in state.statements.items() if c not in RHYTHM_STATEMENTS}
    return replace(state, statements={**statements, "SR": 1.0}, heart_rate=BANK_RATE)


def rhythm_of(state: CardiacState) -> Rhythm:
    """The rhythm a state implies: AF, flutter or ectopy where it states them, else sinus at its
    heart rate (bradycardia below 60, tachycardia above 100, a regular tachycardia above 180).
    Rates are held to the program's range."""
    st, hr = state.statements, float(state.heart_rate)

    def clamp(lo: float, hi: float) -> float:
        return float(min(hi, max(lo, hr)))

    if st.get("AFIB", 0) >= 0.5:
        return Rhythm("afib", rate=clamp(40, 200)).validated()
    if st.get("AFLT", 0) >= 0.5:
        rate = clamp(60, 175)
        return Rhythm("aflutter", rate=rate, ratio=2 if rate >= 120 else 3 if rate >= 80 else 4).validated()
    if st.get("PVC", 0) >= 0.5:
        return Rhythm("pvc", rate=clamp(40, 150)).validated()
    if st.get("PAC", 0) >= 0.5:
        return Rhythm("pac", rate=clamp(40, 150)).validated()
    if hr > 180:
        return Rhythm("svt", rate=clamp(150, 250)).validated()
    name = "sinus_brady" if hr < 60 else "sinus_tachy" if hr > 100 else "sinus"
    lo, hi = {"sinus_brady": (30, 59), "sinus_tachy": (101, 180), "sinus": (60, 100)}[name]
    return Rhythm(name, rate=clamp(lo, hi)).validated()


def bank_for(model, base: np.ndarray, state: CardiacState, seed: int, steps: int = 8,
             contrast: bool = False) -> BeatBank:
    """The patient's beats in ``state``'s morphology, cut from ``BANK_WINDOWS`` of the twin (drawn
    again with the next of ``bank_seeds`` while they give too few beats to cut).

    Args:
        model: a ``TwinModel``.
        base: the patient's base vector.
        seed: the first window's noise seed.
        contrast: with the model's contrastive guidance (``ModelMeta.contrast``), where ``state``
            does not say (``CardiacState.contrast``).

    Raises:
        BankError: no seed gave beats enough.
    """
    first: BankError | None = None
    for s in bank_seeds(seed):
        x = model.generate(np.stack([base] * BANK_WINDOWS), [morphology_state(state)] * BANK_WINDOWS,
                           steps=steps, seed=[s + i for i in range(BANK_WINDOWS)],
                           contrast=None if state.with_contrast(contrast) else 0.0)
        try:
            return BeatBank.from_windows(list(x), model.meta.fs)
        except BankError as exc:
            first = first or exc
    raise no_bank(first)
