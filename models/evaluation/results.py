"""How an evaluation command hands its figures over: JSON on standard output, and the same text
in a file when one is named (the committed ``docs/*.json``)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: Path | None, indent: int = 1) -> None:
    """Print ``result`` as JSON and write it to ``out`` (with a final newline) if given; NumPy
    scalars are written as floats."""
    text = json.dumps(result, indent=indent, default=float)
    print(text)
    if out:
        out.write_text(text + "\n")
