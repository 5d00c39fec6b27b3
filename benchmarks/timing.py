"""What every benchmark shares so that its numbers cannot flatter us.

- `check_load`: prints the load average (1, 5, 15 min) and the core count, and refuses to time (SystemExit)
  when the 1-minute load is above `--max_load` (default 1.0 on this two-core machine: one other busy process):
  a loaded machine hurts PyTorch's fixed thread pool more than XLA's, and last wave's loaded "0.18x PyTorch"
  was 0.97x idle. `--max_load` higher times anyway, with the load printed beside the figures.
- `thread_counts`: the threads each framework computes with, stated with every comparison.
- `interleaved`: A B A B ... rounds, so that a load change during the run hits both sides alike; `spread`
  reports the median with the minimum and maximum.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

LOAD_LIMIT = 1.0


def add_load_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max_load", type=float, default=LOAD_LIMIT,
                        help="refuse to time when the 1-minute load average is above this (default %(default)s)")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def check_load(when: str, max_load: float = LOAD_LIMIT) -> float:
    """Prints the load average; SystemExit when the 1-minute figure is above `max_load`. Returns it."""
    load = os.getloadavg()[0]
    print(f"load average (1, 5, 15 min) {when}: {load_average()} on {os.cpu_count()} cores", flush=True)
    if load > max_load:
        raise SystemExit(f"refusing to time: load average {load:.2f} > --max_load {max_load} (other work shares the "
                         "CPU and would inflate the times; wait for an idle machine, or pass a higher --max_load "
                         "to time anyway and report the load beside the figures)")
    return load


def thread_counts() -> str:
    """The compute threads of XLA's CPU client (one per core unless XLA_FLAGS limits it) and of PyTorch."""
    threads = f"XLA CPU: {os.cpu_count()} threads (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
    try:
        import torch

        threads += f"; PyTorch: {torch.get_num_threads()} intra-op threads"
    except ImportError:
        pass
    return threads


def interleaved(timed: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls alternating (A B A B ...) after one warm-up call each.
    Each callable must block until its work is done."""
    for fn in timed.values():
        fn()
    seconds = {name: [] for name in timed}
    for _ in range(rounds):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def spread(values: list[float]) -> str:
    """'median (min-max)' in seconds."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def median(values: list[float]) -> float:
    return statistics.median(values)
