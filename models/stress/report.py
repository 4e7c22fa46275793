"""The stress report: ``report.json`` (every figure, per case and gross), ``report.md`` (the
tables a tester reads first) and plots: Se and +P against SNR per noise kind, the heart-rate
meter through each rate step, and a strip of every false alarm (up to ``MAX_STRIPS``) with
the truth drawn on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.stress import hr_meter

MAX_STRIPS = 12


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    """The report's tables."""
    source = (f"Model {report['model_version']}; suite: {', '.join(Path(s).name for s in report['suite'])}"
              if "suite" in report else f"A recorded run: {report['recorded']}")
    lines = [f"# Stress report: {report['cases']} cases, lead {report['lead']}",
             "", f"{source}; the first {report['learning_s']:g} s of each record are the detector's learning period.", "",
             *[f"{c['case']} is scored up to {c['unannotated_from']:.1f} s: the service drew it without beats from "
               "there (an unannotated stretch).\n" for c in report.get("per_case", []) if "unannotated_from" in c],
             "## Beats (EC57 matching within 150 ms), gross Se / +P %", "",
             "| beats under | " + " | ".join(report["detectors"]) + " |", "|---|" + "---|" * len(report["detectors"])]
    for key in ["all", *_labels(report)]:
        cells = [f"{_pct(s['beats'][key]['se'])} / {_pct(s['beats'][key]['ppv'])}" if key in s["beats"] else "-"
                 for s in report["detectors"].values()]
        lines.append(f"| {_label(key)} | " + " | ".join(cells) + " |")
    lines += ["", "## Alarms (PhysioNet/CinC 2015 definitions on true and on detected beats)", "",
              "| detector | alarm | raised / true | false | false per hour | median delay s | max delay s | "
              "episode Se / +P % | duration Se / +P % |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["detectors"].items():
        for alarm, a in s["alarms"].items():
            if a.get("not_raised_by_detector"):
                lines.append(f"| {name} | {alarm} | not raised by a QRS detector ({a['truth']} true) | | | | | | |")
                continue
            e = a["episodes"]
            lines.append(f"| {name} | {alarm} | {a['raised']} / {a['raised'] + a['missed']} | {a['false']} | "
                         f"{a['false_per_hour']} | {a['median_delay_s']} | {a['max_delay_s']} | "
                         f"{_pct(e['se'])} / {_pct(e['ppv'])} | {_pct(e['duration_se'])} / {_pct(e['duration_ppv'])} |")
    lines += ["", "False alarms by what covered the lead over the 8 s before their onset:", ""]
    for name, s in report["detectors"].items():
        by = {}
        for a in s["alarms"].values():
            for k, v in a.get("false_by_noise", {}).items():
                by[k] = by.get(k, 0) + v
        lines.append(f"- {name}: " + (", ".join(f"{_label(k)}: {v}" for k, v in sorted(by.items())) or "none"))
    lines += ["", "## Heart-rate meter (60 over the mean of the last 4 RR, each second)", "",
              "| detector | seconds | within 1 bpm or 1% | within 5 bpm or 10% |", "|---|---|---|---|"]
    for name, s in report["detectors"].items():
        h = s["hr"]
        lines.append(f"| {name} | {h['seconds']} | {_pct(h['within_1bpm'])} | {_pct(h['within_10pct'])} |")
    lines += ["", "Rate steps (seconds until the meter stays within 10% or 5 bpm of the new rate; "
              "truth: the same meter on the true beats):", "",
              "| detector | case | step | response s | truth s |", "|---|---|---|---|---|"]
    for name in report["detectors"]:
        for case in report["per_case"]:
            for st in case["scores"].get(name, {}).get("steps", []):
                lines.append(f"| {name} | {case['case']} | {st['from']:g} -> {st['to']:g} at {st['at']:g} s | "
                             f"{st['response_s']} | {st['truth_response_s']} |")
    errors = [e for s in report["detectors"].values() for e in s["errors"]]
    if errors:
        lines += ["", "## Detector errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def _label(key: str) -> str:
    """``ma|6`` -> ``ma 6 dB``; ``veb:all`` -> ``VEB (all beats)``."""
    if key.endswith(":all"):
        return f"{key.split(':')[0].upper()} (all beats)"
    kind, _, snr = key.partition("|")
    return f"{kind} {snr} dB" if snr else kind


def _labels(report: dict) -> list[str]:
    """Noise labels (``kind|snr``) in the report, clean first, then by kind and falling SNR."""
    labels = {k for s in report["detectors"].values() for k in s["beats"] if k != "all"}

    def key(k: str):
        kind, _, snr = k.partition("|")
        return (k.endswith(":all"), k != "clean", kind, -float(snr) if snr else 0.0)
    return sorted(labels, key=key)


def write_report(out: Path, report: dict, per_det: dict) -> None:
    """``report.json``, ``report.md`` and the plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    _plots(out, report, per_det)


def _plots(out: Path, report: dict, per_det: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({k.partition("|")[0] for k in _labels(report) if k.partition("|")[2]})
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.2), squeeze=False)
        for ax, kind in zip(axes[0], kinds, strict=True):
            for name, s in report["detectors"].items():
                pts = sorted((float(k.partition("|")[2]), v) for k, v in s["beats"].items()
                             if k.startswith(kind + "|"))
                if pts:
                    x = [p[0] for p in pts]
                    ax.plot(x, [100 * p[1]["se"] for p in pts], "o-", label=f"{name} Se")
                    ax.plot(x, [100 * p[1]["ppv"] for p in pts], "s--", label=f"{name} +P")
            ax.set_title(kind)
            ax.set_xlabel("SNR dB")
            ax.invert_xaxis()
            ax.set_ylim(0, 102)
        axes[0][0].set_ylabel("%")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "se_ppv_snr.png", dpi=80)
        plt.close(fig)
    first = next(iter(per_det), None)
    stepped = [(c, rec, s) for c, rec, s in per_det.get(first, []) if "error" not in s and s["steps"]]
    if stepped:
        fig, axes = plt.subplots(len(stepped), 1, figsize=(9, 2.2 * len(stepped)), squeeze=False)
        for ax, (case, rec, _) in zip(axes[:, 0], stepped, strict=True):
            at = np.arange(0, rec.seconds, 0.5)
            ax.plot(at, hr_meter.meter(rec.beats, at), "k", lw=1, label="truth")
            for name, rows in per_det.items():
                hit = next((r for r in rows if r[0] == case and "error" not in r[2]), None)
                if hit:
                    ax.plot(at, hr_meter.meter(hit[2]["found"], at), lw=0.8, label=name)
            ax.set_title(case, fontsize=8)
            ax.set_ylabel("bpm")
        axes[0, 0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "hr_steps.png", dpi=80)
        plt.close(fig)
    strips = [(name, c, rec, s, a, f) for name, rows in per_det.items() for c, rec, s in rows if "error" not in s
              for a, v in s["alarms"].items() for f in v.get("false_at", [])][:MAX_STRIPS]
    if strips:
        fig, axes = plt.subplots(len(strips), 1, figsize=(10, 1.8 * len(strips)), squeeze=False)
        for ax, (name, case, rec, s, alarm, f) in zip(axes[:, 0], strips, strict=True):
            lo, hi = max(0, int((f["time"] - 8) * rec.fs)), min(len(rec.signal), int((f["time"] + 2) * rec.fs))
            t = np.arange(lo, hi) / rec.fs
            ax.plot(t, rec.signal[lo:hi], lw=0.6, color="k")
            for b in rec.beats[(rec.beats >= t[0]) & (rec.beats <= t[-1])]:
                ax.axvline(b, color="g", lw=0.6)
            found = s["found"]
            ax.plot(found[(found >= t[0]) & (found <= t[-1])], np.full(np.sum((found >= t[0]) & (found <= t[-1])),
                    rec.signal[lo:hi].max()), "rv", ms=4)
            ax.axvline(f["time"], color="r", lw=1.2)
            ax.set_title(f"{name}: false {alarm} alarm, {case} at {f['time']} s ({_label(f['noise'])}); green: true beats, "
                         "red: detected", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "false_alarms.png", dpi=70)
        plt.close(fig)
