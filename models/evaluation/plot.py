"""ECG on standard paper: 25 mm/s, 10 mm/mV (10 mm per unit of whatever units it is given: a
z-scored record is drawn at 10 mm per z), 1 mm / 5 mm grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def plot_ecg(signal: np.ndarray, fs: float, path: str | Path, title: str = "", units: str = "mV") -> Path:
    """(samples, 12) -> a 3x4 layout PNG on a pink grid, each column a quarter of the record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = signal.shape[0]
    secs = n / fs
    col = secs / 4
    fig_w = secs * 25 / 25.4 * 0.7 + 1
    fig, ax = plt.subplots(figsize=(max(6, fig_w), 4.2))
    rows = 3
    offs = [3 * 1.6 - r * 1.6 for r in range(rows)]
    for li in range(12):
        r, c = li % 3, li // 3
        a, b = int(c * col * fs), int((c + 1) * col * fs)
        t = np.arange(a, b) / fs
        ax.plot(t, signal[a:b, li] * 0.5 + offs[r], color="black", lw=0.6)
        ax.text(c * col + 0.05, offs[r] + 0.5, LEADS[li], fontsize=7)
    ax.set_xlim(0, secs)
    ax.set_ylim(offs[-1] - 1.2, offs[0] + 1.0)
    for x in np.arange(0, secs, 0.04):
        ax.axvline(x, color="#f4c6c6" if round(x / 0.04) % 5 else "#e58e8e", lw=0.3 if round(x / 0.04) % 5 else 0.6, zorder=0)
    for y in np.arange(offs[-1] - 1.2, offs[0] + 1.0, 0.05):
        ax.axhline(y, color="#f4c6c6" if round(y / 0.05) % 5 else "#e58e8e", lw=0.3 if round(y / 0.05) % 5 else 0.6, zorder=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title + f"  (25 mm/s, 10 mm/{units})", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
