"""CPSC2018 (the PhysioNet/CinC 2020 training set's China part): a record's diagnoses, age and
sex, from its header's ``#Key: value`` comments."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Header:
    dx: tuple[str, ...]  # CPSC2018's codes: Normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE
    age: float  # NaN where unknown
    sex: int  # PTB-XL coding: 0 male, 1 female; -1 unknown


def read_header(comments: list[str]) -> Header:
    """The diagnoses, age and sex in a record's header comments (``wfdb.Record.comments``)."""
    c = {k.strip(): v.strip() for k, v in (x.split(":", 1) for x in comments if ":" in x)}
    dx = tuple(d.strip() for d in c.get("Dx", "").split(",") if d.strip())
    age = float(c["Age"]) if c.get("Age", "").replace(".", "").isdigit() else float("nan")
    return Header(dx, age, {"Male": 0, "Female": 1}.get(c.get("Sex", ""), -1))
