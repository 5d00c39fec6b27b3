"""Where the time goes, operation by operation: the tiny U-Net's train step and its DDIM-50 sampling loop
profiled in JAX (XLA:CPU) and in PyTorch, the top operations of each side in one table per workload.

- train step: `benchmarks.unet`'s tiny config (16x16 latents, batch 2; forward + backward + Adam), the jitted
  step of `benchmarks.unet.jax_step` against `benchmarks.unet.torch_step`;
- sampling: `benchmarks.sampling`'s U-Net (32x32 latents, batch 2) in DDIM-50, the scan-compiled sampler against
  diffusers' loop.

JAX: a `jax.profiler` trace of --iterations calls after as many warm-up calls (at least 3); every XLA:CPU thunk
the trace records is summed per HLO instruction of the compiled module (self time: a control-flow thunk such as
the sampler's while loop is charged only what its body's thunks do not account for) and named from the
optimised HLO — the instruction's kind, the operations a fusion holds (convolution, dot, reduce, ...), its
output shape, and the JAX operation it came from (the HLO metadata's op_name, shortened); instructions of the
same kind and output shape share a row, their calls counted. PyTorch: `torch.profiler` over the same number of
iterations (warmed up alike), its operators' self CPU time. Times are milliseconds per iteration; the share is
of each side's summed self time (on two threads, thunks may overlap, so the sum can exceed the wall time
printed beside it). The load average is printed, and a load above --max_load refuses to run
(benchmarks/timing.py).

    python -m benchmarks.profile                           # both workloads, the top 15 of each side
    python -m benchmarks.profile --workload sampling --top 25
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time
from dataclasses import dataclass

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import timing
from benchmarks.sampling import CONTEXT_LENGTH, SAMPLERS, TINY_UNET, build_unets, jax_sampler, torch_sampler
from benchmarks.unet import CONFIGS, flax_unet_like, jax_step, make_batch, torch_step

# HLO operations that say what a fusion computes (its parameters, constants and layout changes do not).
_TELLING_OPS = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter", "exponential", "log",
                "tanh", "logistic", "rsqrt", "sqrt", "divide", "power", "erf", "sine", "cosine", "scatter", "gather",
                "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "slice", "transpose", "sort")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>\S+) = (?P<type>.+?) (?P<op>[a-z][\w-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(?P<name>\S+) \(.*\{$")


@dataclass(frozen=True)
class Instruction:
    op: str  # the HLO opcode (fusion, convolution, while, copy, ...)
    shape: str  # the output type, layout dropped
    source: str  # the JAX operation of the HLO metadata's op_name, shortened
    fused: tuple[str, ...]  # for a fusion: the telling operations of the computation it calls


def hlo_instructions(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction of an optimised HLO module's text, by name."""
    computations: dict[str, list[str]] = collections.defaultdict(list)  # computation -> opcodes inside
    parsed = {}
    current = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header["name"]
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        computations[current].append(match["op"])
        calls = re.search(r"calls=%([\w.\-]+)", match["rest"])
        op_name = re.search(r'op_name="([^"]*)"', match["rest"])
        parsed[match["name"]] = (match["op"], re.sub(r"\{[^}]*\}", "", match["type"]),
                                 _short_source(op_name[1] if op_name else ""), calls[1] if calls else None)
    instructions = {}
    for name, (op, shape, source, called) in parsed.items():
        fused = ()
        if called is not None:
            inside = collections.Counter(o for o in computations.get(called, ()) if o in _TELLING_OPS)
            fused = tuple(f"{o} x{n}" if n > 1 else o for o, n in inside.most_common())
        instructions[name] = Instruction(op, shape, source, fused)
    return instructions


def _short_source(op_name: str) -> str:
    """The last three steps of an HLO op_name (jit(step)/jvp(...)/.../conv_general_dilated), transforms kept."""
    return "/".join(op_name.split("/")[-3:])


def _self_times(events: list[dict]) -> tuple[dict[str, float], collections.Counter]:
    """(microseconds, executions) per HLO instruction: each event's duration less that of the events nested in it
    on the same thread (a while thunk runs its body's thunks inside its own span)."""
    totals: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    by_thread = collections.defaultdict(list)
    for event in events:
        by_thread[event["tid"]].append(event)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for event in thread_events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:
                stack.pop()
            if stack:
                totals[stack[-1]["args"]["hlo_op"]] -= event["dur"]
            totals[event["args"]["hlo_op"]] += event["dur"]
            calls[event["args"]["hlo_op"]] += 1
            stack.append(event)
    return totals, calls


Row = tuple[str, str, float, float]  # (operation, detail, calls per iteration, self ms per iteration)


def jax_profile(run, compiled, iterations: int) -> tuple[float, list[Row]]:
    """(wall seconds per iteration, rows largest first) of `run`, a blocking call of `compiled`, from a
    jax.profiler trace; a row sums the HLO instructions of one kind and output shape (e.g. the six 3x3
    convolutions to f32[2,32,32,32]), its detail the JAX operation of the costliest of them."""
    hlo_text = compiled.as_text()
    module = hlo_text.split(",", 1)[0].removeprefix("HloModule ").strip()
    instructions = hlo_instructions(hlo_text)
    for _ in range(max(3, iterations)):  # a fresh process's first calls run up to twice as long
        run()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(iterations):
                run()
            wall = (time.perf_counter() - start) / iterations
        (path,) = glob.glob(f"{directory}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as trace:
            events = json.load(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    thunks = [e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == module
              and "hlo_op" in e.get("args", {})]
    totals, calls = _self_times(thunks)
    groups: dict[str, list] = {}  # label -> [source of the costliest, calls, micros, its micros]
    for name, micros in totals.items():
        instruction = instructions.get(name)
        if instruction is None:
            label, source = name, ""
        else:
            what = f"{instruction.op}[{', '.join(instruction.fused)}]" if instruction.fused else instruction.op
            label, source = f"{what} {instruction.shape}", instruction.source
        group = groups.setdefault(label, [source, 0, 0.0, micros])
        group[1] += calls[name]
        group[2] += micros
        if micros > group[3]:
            group[0], group[3] = source, micros
    rows = [(label, source, n / iterations, micros / 1e3 / iterations)
            for label, (source, n, micros, _) in groups.items()]
    return wall, sorted(rows, key=lambda row: -row[3])


def torch_profile(run, iterations: int) -> tuple[float, list[Row]]:
    """(wall seconds per iteration, rows largest first): torch.profiler's operators by input shapes, self CPU."""
    for _ in range(max(3, iterations)):
        run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        wall = (time.perf_counter() - start) / iterations
    rows = [(a.key, str(a.input_shapes)[:60], a.count / iterations, a.self_cpu_time_total / 1e3 / iterations)
            for a in profile.key_averages(group_by_input_shape=True)]
    return wall, sorted(rows, key=lambda row: -row[3])


def print_table(title: str, side: str, wall: float, rows: list[Row], top: int) -> None:
    total = sum(row[3] for row in rows)
    print(f"\n### {title}: {side}, wall {1e3 * wall:.2f} ms per iteration (profiled), summed self time "
          f"{total:.2f} ms\n")
    print(f"| rank | operation | {'JAX operation (the costliest)' if side == 'JAX' else 'input shapes'} | calls | ms | "
          "share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rank, (label, detail, calls, ms) in enumerate(rows[:top], 1):
        print(f"| {rank} | {label} | {detail} | {calls:g} | {ms:.3f} | {ms / total:.1%} |")


def profile_train_step(iterations: int, top: int) -> None:
    config, latent, batch_size, context_length = CONFIGS["tiny"]
    batch = make_batch(config, latent, batch_size, context_length)
    torch.manual_seed(0)
    torch_unet = diffusers.UNet2DConditionModel(**config)
    model = flax_unet_like(torch_unet, config, jnp.float32, None)
    _, step, _, _, compiled = jax_step(model, batch)
    title = f"tiny train step ({latent}x{latent} latents, batch {batch_size})"
    print_table(title, "JAX", *jax_profile(step, compiled, iterations), top)
    torch_run, release = torch_step(torch_unet, batch)
    print_table(title, "PyTorch", *torch_profile(torch_run, iterations), top)
    release()


def profile_sampling(iterations: int, top: int) -> None:
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((2, TINY_UNET["sample_size"], TINY_UNET["sample_size"], 4)).astype(np.float32)
    context = rng.standard_normal((2, CONTEXT_LENGTH, TINY_UNET["cross_attention_dim"])).astype(np.float32)
    with tempfile.TemporaryDirectory() as directory:
        torch_unet, flax_unet = build_unets(directory)
    sampler, kwargs, scheduler, num_steps = SAMPLERS["DDIM"]
    run, _, _, compiled = jax_sampler(flax_unet, sampler, kwargs, num_steps, jnp.asarray(x_T), jnp.asarray(context))
    title = f"DDIM-{num_steps} sampling (32x32 latents, batch 2)"
    print_table(title, "JAX", *jax_profile(run, compiled, iterations), top)
    torch_run, _ = torch_sampler(torch_unet, scheduler, num_steps, torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy()),
                                 torch.from_numpy(context))
    print_table(title, "PyTorch", *torch_profile(torch_run, iterations), top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["step", "sampling", "both"], default="both")
    parser.add_argument("--top", type=int, default=15, help="operations listed per side")
    parser.add_argument("--iterations", type=int, default=0,
                        help="profiled calls (default: 20 train steps, 2 sampling runs)")
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} | PyTorch {torch.__version__} on CPU | "
          f"{timing.thread_counts()}")
    if args.workload in ("step", "both"):
        profile_train_step(args.iterations or 20, args.top)
    if args.workload in ("sampling", "both"):
        profile_sampling(args.iterations or 2, args.top)
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
