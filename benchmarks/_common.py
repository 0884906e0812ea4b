"""Shared helpers for the benchmark scripts: the machine header and interleaved timing.

Every script times its contenders the same way, so that a rerun on a busy or noisy machine
moves all of them alike instead of flipping a ratio:

1. one warm-up call of each contender (allocations, lazy imports, caches);
2. ``rounds`` rounds of A B C A B C ...: each round calls every contender once, in the same
   order, so slow phases of the machine (another process, a frequency change) fall on all of
   them rather than on whichever ran during that phase;
3. min / median / max seconds per contender, and the ratio of *medians* to a baseline.

The header records the command, the CPU model, core and thread counts and the load average at
the start, so a reader can tell a quiet run from a crowded one.

``--threads`` sets torch's intra-op threads. On a CPU shared with other busy processes, two
OpenMP threads wait for each other at the end of every parallel operator whenever one of them is
descheduled: a workload of many small operators (a batch module, a data transform) can then run
several times slower than with one thread, by an amount that changes from minute to minute
(``docs/benchmarks.md`` shows a ResNet-50 step at a median 13.9 s with two threads, 4.5 s with one).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


def cpu_model() -> str:
    """The CPU's model name (what ``lscpu | grep 'Model name'`` prints), or the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def threads(n: int) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{n} thread{'' if n == 1 else 's'}"


def machine() -> str:
    """One line naming the machine the numbers were measured on."""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{platform.node()} ({cpu_model()}, {platform.machine()}, {os.cpu_count()} cores{gpu}), "
            f"torch {torch.__version__}, {threads(torch.get_num_threads())}")


def add_args(parser: argparse.ArgumentParser, rounds: int, warmup: int = 1) -> None:
    """The options every benchmark shares: ``--rounds``, ``--warmup`` and ``--threads``."""
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds after the warm-up")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls of each contender first")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads when ``threads`` > 0 (see the module docstring)."""
    if threads > 0:
        torch.set_num_threads(threads)


def header(title: str, rounds: int, warmup: int) -> None:
    """Print the title, the command, the machine, the date, the load average and the timing protocol."""
    print(title)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"load average at start (1, 5, 15 min): {load_average()}")
    print(f"protocol: {warmup} warm-up call(s) each, then {rounds} interleaved rounds (A B C A B C ...); "
          f"min / median / max per contender, ratio of medians")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn`` (CUDA synchronised before and after)."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


@dataclass
class Timing:
    """The seconds of every timed call of one contender."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def interleaved(contenders: Mapping[str, Callable[[], object]], rounds: int = 5,
                warmup: int = 1) -> dict[str, Timing]:
    """Time ``contenders`` ({name: zero-argument callable}) in interleaved rounds.

    ``warmup`` untimed calls of each (in order), then ``rounds`` rounds in each of which every
    contender is called once, in the given order (A B C A B C ...). Returns {name: Timing}.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    out = {name: Timing(name) for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            out[name].times.append(time_once(fn))
    return out


def fmt(seconds: float, unit: str) -> str:
    """Seconds written in ``unit`` ("s" or "ms") with a width that suits the magnitude."""
    v = seconds * (1e3 if unit == "ms" else 1.0)
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def ratio(r: float) -> str:
    """A ratio with three decimals, or in scientific notation when it is below 0.1."""
    return f"{r:.3f}" if r >= 0.1 else f"{r:.2e}"


def print_table(timings: Mapping[str, Timing], baseline: str, unit: str = "s",
                label: str = "contender", extra: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Markdown table: min / median / max per contender and the ratio of medians to ``baseline``.

    ``extra``: optional further columns, {column title: {contender name: cell text}}.
    """
    extra = extra or {}
    base = timings[baseline].median
    cols = [label, f"min {unit}", f"median {unit}", f"max {unit}", f"median / {baseline}", *extra]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for name, t in timings.items():
        cells = [name, fmt(t.min, unit), fmt(t.median, unit), fmt(t.max, unit), ratio(t.median / base)]
        cells += [extra[c].get(name, "") for c in extra]
        print("| " + " | ".join(cells) + " |")
