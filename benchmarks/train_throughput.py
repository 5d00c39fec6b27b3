"""Training steps/s of `main.py` runs, for comparing source trees (e.g. before and after a trainer change).

    python benchmarks/train_throughput.py --tree /tmp/before --tree . --rounds 2 --steps 150 \\
        -- --config configs/multitask.py

Each round starts one run per tree in turn (interleaved: tree A, tree B, tree A, ...), each a fresh
`python main.py ... --workdir TMP --config.train.num_steps=STEPS --config.train.log_every=LOG_EVERY` from that
tree's own directory, one after the other (never two at once). Steps/s is measured from the absl timestamps of
the log lines `[N] ...` that the metric writer prints: (last logged step - first logged step after `--skip`) /
seconds between the two lines. It leaves out start-up and compilation, and counts everything the loop does
between those steps (data, step, metrics, checkpoints). The table prints the median over rounds and each round,
and each tree's peak host memory: the largest peak RSS of its runs (the run's process, from os.wait4).

The load average is printed before each run: on a machine doing other work the figures are not results.
Arguments after `--` go to every run (they must be accepted by every tree's main.py).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile

from benchmarks import timing

_LOG_LINE = re.compile(r"^I(\d{4}) (\d\d):(\d\d):(\d\d\.\d+) .*\] \[(\d+)\] ")


def logged_steps(log: str) -> list[tuple[int, float]]:
    """[(step, seconds since midnight)] of the metric writer's `[N] ...` lines of an absl log."""
    found = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            _, hours, minutes, seconds, step = match.groups()
            found.append((int(step), int(hours) * 3600 + int(minutes) * 60 + float(seconds)))
    return found


def steps_per_second(log: str, skip: int) -> float:
    """Steps/s between the first logged step > `skip` and the last logged step (midnight wrap handled), each
    step at its first line: the evaluators' scalars are logged under the step they evaluated, after they ran."""
    first_lines: dict[int, float] = {}
    for step, t in logged_steps(log):
        first_lines.setdefault(step, t)
    steps = [(step, t) for step, t in first_lines.items() if step > skip]
    if len(steps) < 2:
        raise RuntimeError(f"fewer than two logged steps after step {skip} in the run's log:\n{log[-3000:]}")
    (first, t0), (last, t1) = steps[0], steps[-1]
    return (last - first) / ((t1 - t0) % 86400)


def run_once(tree: str, steps: int, log_every: int, extra: list[str]) -> tuple[str, float]:
    """One training run from `tree` in a fresh workdir; returns its log (stderr + stdout) and its peak RSS
    in GiB."""
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, "main.py", "--workdir", workdir, *extra,
                   f"--config.train.num_steps={steps}", f"--config.train.log_every={log_every}"]
        process = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONPATH": os.path.abspath(tree)})
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} (in {tree}) failed:\n{output[-3000:]}")
        return output, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="a source tree holding main.py (repeat)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log_every", type=int, default=25)
    parser.add_argument("--skip", type=int, default=50, help="steps left out at the start (warm-up)")
    timing.add_load_flag(parser)
    args, extra = parser.parse_known_args()
    timing.check_load("at start", args.max_load)
    extra = [a for a in extra if a != "--"]
    rates: dict[str, list[float]] = {tree: [] for tree in args.tree}
    peaks: dict[str, float] = {tree: 0.0 for tree in args.tree}
    for round_index in range(args.rounds):
        for tree in args.tree:
            print(f"{datetime.datetime.now():%H:%M:%S} round {round_index + 1} {tree}: load average "
                  f"{timing.load_average()}", flush=True)
            output, peak = run_once(tree, args.steps, args.log_every, extra)
            rates[tree].append(steps_per_second(output, args.skip))
            peaks[tree] = max(peaks[tree], peak)
            print(f"  {rates[tree][-1]:.3f} steps/s, peak host RSS {peak:.2f} GiB", flush=True)
    print(f"\nsteps {args.skip}..{args.steps}, {' '.join(extra)}\n")
    print("| tree | median steps/s | per round | peak host RSS GiB |\n| --- | --- | --- | --- |")
    for tree, values in rates.items():
        print(f"| {tree} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} | "
              f"{peaks[tree]:.2f} |")


if __name__ == "__main__":
    main()
