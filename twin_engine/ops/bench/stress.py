"""``twin-engine bench stress``: the shipped stress suite, run ``repeats`` times with the three
built-in detectors: wall time per run (the issue's budget: 10 minutes on 2 cores) and whether
every rerun gave the same report."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from models.stress.detectors import detector
from models.twin import TwinModel
from twin_engine.config import Settings
from twin_engine.ops.bench.common import machine
from twin_engine.ops.stress import SHIPPED, run_suite


def bench_stress(settings: Settings, repeats: int = 3, suite: Path = SHIPPED) -> dict:
    """Seconds per run of the suite (model loaded once), its cases, and whether the reports agree."""
    model = TwinModel.load(Path(settings.model_path))
    dets = [detector(d) for d in ("xqrs", "neurokit2", "pantompkins")]
    seconds, reports = [], []
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="twin-bench-stress-") as tmp:
            t0 = time.perf_counter()
            report = run_suite(settings, model, [suite], dets, Path(tmp))
            seconds.append(time.perf_counter() - t0)
            reports.append((Path(tmp) / "report.json").read_text())
        print(f"run {i + 1}: {report['cases']} cases, {seconds[-1]:.1f} s", flush=True)
    result = {"machine": machine(), "suite": str(suite), "cases": report["cases"],
              "ecg_seconds": sum(c["seconds"] for c in report["per_case"]), "run_seconds": [round(s, 2) for s in seconds],
              "median_s": round(statistics.median(seconds), 2), "identical_reports": len(set(reports)) == 1,
              "gross": {k: v["beats"]["all"] for k, v in json.loads(reports[0])["detectors"].items()}}
    print(f"median {result['median_s']} s for {result['cases']} cases ({result['ecg_seconds'] / 60:.0f} min of ECG, "
          f"3 detectors); reports identical: {result['identical_reports']}")
    return result
