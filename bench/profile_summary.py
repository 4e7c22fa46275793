"""Summarise a py-spy profile (``py-spy record --format raw --threads``): per thread, the share
of its samples with each function on top of the stack (self) and anywhere on it (inclusive).
py-spy leaves out samples it finds idle, but attached to a worker on the GPU machines it kept
idle executor threads waiting for work (``_worker``), so a thread's sample count is no measure of
its CPU: ``--cpu`` gives that.

py-spy reads the stacks from outside the process, so it sees every thread without taking the
GIL. An in-process sampler (a thread reading ``sys._current_frames``) was tried first and
rejected: it needs the GIL to sample, gets it whenever the loop's thread releases it, which NumPy
does inside each large array operation, and so it put ``quantize`` at 28% of the event loop where
py-spy put it at about 10% with its NumPy calls and cProfile at 6% (null generator, 10 s segments).

    py-spy record --threads --format raw -o prof.raw -- python -m twin_engine.ops.cli bench serve ...
    python bench/profile_summary.py prof.raw --top 25

``--cpu before after`` adds each thread's CPU over the window, from two snapshots of
``/proc/PID/task/*/stat`` taken around the recording (``thread_cpu``): a thread waiting on the GPU
or a socket in C shows in py-spy's samples only if it spins, but always in its CPU.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from stream.kafka.embedded import process_cpu_seconds

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: samples on different lines of a function add up."""
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) by thread id, for every thread of ``pid``."""
    cpu = {t.name: process_cpu_seconds(pid, int(t.name)) for t in sorted(Path(f"/proc/{pid}/task").iterdir())}
    return {t: c for t, c in cpu.items() if c is not None}


def read_thread_cpu(path: Path) -> dict[str, float]:
    """A snapshot as ``--snapshot`` prints it (``tid cpu_seconds`` lines)."""
    return {t: float(c) for t, c in (line.split() for line in path.read_text().splitlines() if line.strip())}


def cores_per_thread(before: dict[str, float], after: dict[str, float], seconds: float) -> list[tuple[float, str]]:
    """(cores, thread id) over the window between two snapshots, busiest first; a thread started
    within the window counts from zero."""
    return sorted((((c - before.get(t, 0.0)) / seconds, t) for t, c in after.items()), reverse=True)


def summarise(path: Path, top: int, cpu: tuple[dict[str, float], dict[str, float]] | None = None,
              seconds: float = 0.0) -> str:
    """The per-thread tables; ``cpu``: two ``thread_cpu`` snapshots ``seconds`` apart."""
    self_n: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    incl_n: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    names: dict[str, str] = {}  # thread id -> its label
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        frames, count = m.group(1).split(";"), int(m.group(2))
        m = re.match(r"thread \((\d+)\): (.*)", frames[0])
        thread = f"{m.group(2)} ({m.group(1)})" if m else "?"
        if m:
            names[m.group(1)] = thread
        funcs = [_function(f) for f in frames[1:]]
        total[thread] += count
        if funcs:
            self_n[thread][funcs[-1]] += count
        for f in set(funcs):
            incl_n[thread][f] += count
    out = [f"{sum(total.values())} samples"]
    if cpu is not None and seconds > 0:
        used = cores_per_thread(*cpu, seconds)
        out += ["", "CPU cores per thread over the window:"]
        out += [f"  {c:5.2f}  {names.get(t, 'thread ' + t)}" for c, t in used if c >= 0.01]
        out.append(f"  {sum(c for c, _ in used):5.2f}  all threads")
    for thread, n in total.most_common():
        out += ["", f"== {thread}: {n} samples ({100 * n / sum(total.values()):.0f}% of all)", "  self %"]
        out += [f"  {100 * c / n:6.1f}  {f}" for f, c in self_n[thread].most_common(top)]
        out += ["  incl %"] + [f"  {100 * c / n:6.1f}  {f}" for f, c in incl_n[thread].most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, nargs="?")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cpu", type=Path, nargs=2, help="two thread_cpu snapshots around the recording")
    ap.add_argument("--seconds", type=float, default=0.0, help="time between the snapshots")
    ap.add_argument("--snapshot", type=int, metavar="PID", help="print a thread_cpu snapshot of PID and exit")
    args = ap.parse_args()
    if args.snapshot:
        print("".join(f"{t} {c}\n" for t, c in thread_cpu(args.snapshot).items()), end="")
        return
    cpu = (read_thread_cpu(args.cpu[0]), read_thread_cpu(args.cpu[1])) if args.cpu else None
    print(summarise(args.raw, args.top, cpu, args.seconds))


if __name__ == "__main__":
    main()
