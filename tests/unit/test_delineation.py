"""The multi-lead delineation against LUDB's expert annotations, on records it was not fitted on."""

import numpy as np

from models.delineation import delineate, intervals
from models.evaluation.physiology import ludb_validation


def test_intervals_agree_with_ludb_experts(data_dir):
    res = ludb_validation(data_dir / "ludb", 250)["check_76_150"]
    assert res["qrs_ms"]["records"] >= 70 and res["qrs_ms"]["mae_ms"] < 15 and res["qrs_ms"]["r"] > 0.7
    assert res["qt_ms"]["records"] >= 65 and res["qt_ms"]["mae_ms"] < 40 and res["qt_ms"]["r"] > 0.6
    assert res["pr_ms"]["records"] >= 40 and res["pr_ms"]["mae_ms"] < 35


def test_no_beats_no_intervals():
    flat = np.zeros((2500, 12))
    assert delineate(flat, 250) == []
    assert all(np.isnan(v) for v in intervals(flat, 250).values())
