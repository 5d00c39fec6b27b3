"""The trainer's configuration keys: defaults, and the one validation pass run before anything is built.

An experiment config (`configs/*.py`) starts from `default_train_config()` and adds the method's and the
data's keys. `validate_config` checks the trainer's sections and the method's (`Method.config_sections`)
in one pass and raises one ValueError listing every invalid value with its key and what is allowed.

Warm starts and composed models:

    config.init_from.workdir     another run's workdir whose trainable parameters initialise this run's
                                 (fresh starts only; "" = off); .step (None = newest), .params ("ema" or
                                 "params"), .include (a regex over dotted parameter paths; "" = all)
    config.frozen_from.NAME      {workdir, step, params, source, target}: the subtree `source` (dotted path,
                                 "" = all) of another run's trainable parameters becomes the frozen
                                 subtree `target` of this model, at every start
    config.evals.NAME            {kind, every, ...}: an evaluator of the method (kinds: the method's
                                 `evaluator_kinds`), run every `every` steps and after the last (0: last only)

`--mode=edit` (editdiff/train/modes.py):

    config.edit.input            an image file, or a folder whose images (below it, recursively) are edited
    config.edit.output           where the results go ("" = WORKDIR/edit)
    config.edit.*                the method's own edit settings (its config_sections check them)
"""
from __future__ import annotations

import os
import re

import ml_collections

from editdiff import config_checks as checks
from editdiff.train.distributed import default_distributed_config, distributed_section

SCHEDULES = ("constant", "cosine", "exponential")
COMPUTE_DTYPES = ("float32", "bfloat16")
PARAMS_KINDS = ("ema", "params")


def default_train_config() -> ml_collections.ConfigDict:
    """The trainer's keys with defaults sized for a short CPU run."""
    config = ml_collections.ConfigDict()
    config.method = ""
    config.seed = 0
    # Parameters are always float32; this is the dtype the method computes activations in.
    config.compute_dtype = "float32"
    # JAX's persistent compilation cache: "auto" (a user cache dir), a directory, or "" (off).
    config.compilation_cache_dir = "auto"

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 1000
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.schedule = "constant"
    config.train.decay_every = 1000  # exponential: the rate is multiplied by decay_rate every N steps
    config.train.decay_rate = 0.9
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.adam_eps = 1e-8
    config.train.weight_decay = 0.0
    config.train.grad_clip_norm = 1.0  # 0 turns clipping off
    # Micro-batches per optimiser update; num_steps and the schedule's steps count micro-batches.
    config.train.grad_accum_steps = 1
    config.train.ema_decay = 0.999
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 3
    config.train.async_checkpointing = True
    config.train.profile_steps = 0  # 0: no profile

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by the other axis
    config.mesh.fsdp = 1
    # Arrays with fewer elements stay replicated: sharding them saves little memory and costs collectives.
    config.mesh.fsdp_min_size = 2**14

    config.distributed = default_distributed_config()

    config.init_from = ml_collections.ConfigDict(dict(workdir="", step=ml_collections.config_dict.placeholder(int),
                                                      params="ema", include=""))
    config.frozen_from = ml_collections.ConfigDict()
    config.evals = ml_collections.ConfigDict()
    config.edit = ml_collections.ConfigDict(dict(input="", output=""))
    return config


def frozen_from_entry(workdir: str, *, source: str = "", target: str = "", params: str = "ema",
                      step: int | None = None) -> ml_collections.ConfigDict:
    """One `config.frozen_from.NAME` entry."""
    return ml_collections.ConfigDict(dict(workdir=workdir, source=source, target=target, params=params, step=step))


def eval_entry(kind: str, every: int = 0, **settings) -> ml_collections.ConfigDict:
    """One `config.evals.NAME` entry."""
    return ml_collections.ConfigDict(dict(kind=kind, every=every, **settings))


_MESH_AXIS: checks.Check = ((lambda v: checks.is_int(v) and (v >= 1 or v == -1)),
                             "an integer >= 1, or -1 for all remaining devices")


def _is_regex(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


_REGEX: checks.Check = (_is_regex, "a Python regular expression ('' = every path)")


_EDIT_INPUT: checks.Check = ((lambda v: isinstance(v, str) and (v == "" or os.path.exists(v))),
                              "'' (no edit) or an existing image file or folder")


def _warm_start_rule(prefix: str, *, same_method: bool):
    """A rule: `config.PREFIX.workdir` ("" = off) is a training run's workdir (config.json and checkpoints/),
    of this config's method when `same_method`. Read before anything is built (warm_start.py reads it again)."""

    def rule(config) -> list[str]:
        from editdiff.train.warm_start import run_workdir_problem  # orbax and the checkpoint code: only when asked

        workdir = config[prefix].workdir
        problem = workdir and run_workdir_problem(workdir, method=config.method if same_method else None, key=prefix)
        return [problem] if problem else []

    return rule


def _mesh_rules(config) -> list[str]:
    if config.mesh.data == -1 and config.mesh.fsdp == -1:
        return ["config.mesh.data = -1 and config.mesh.fsdp = -1: at most one mesh axis may be -1"]
    return []


def _accumulation_rules(config) -> list[str]:
    if config.train.num_steps % config.train.grad_accum_steps:
        return [f"config.train.num_steps = {config.train.num_steps} is invalid; allowed: a multiple of "
                f"config.train.grad_accum_steps = {config.train.grad_accum_steps}"]
    return []


_TRAIN_CHECKS: dict[str, checks.Check] = {
    "num_steps": checks.int_at_least(1),
    "learning_rate": checks.number_above(0),
    "warmup_steps": checks.int_at_least(0),
    "schedule": checks.one_of(SCHEDULES),
    "decay_every": checks.int_at_least(1),
    "decay_rate": checks.number_in(0, 1),
    "adam_b1": checks.number_in(0, 1, high_open=True),
    "adam_b2": checks.number_in(0, 1, high_open=True),
    "adam_eps": checks.number_above(0),
    "weight_decay": checks.number_at_least(0),
    "grad_clip_norm": checks.number_at_least(0),
    "grad_accum_steps": checks.int_at_least(1),
    "ema_decay": checks.number_in(0, 1, high_open=True),
    "log_every": checks.int_at_least(1),
    "checkpoint_every": checks.int_at_least(1),
    "keep_checkpoints": checks.int_at_least(1),
    "async_checkpointing": checks.BOOLEAN,
    "profile_steps": checks.int_at_least(0),
}

_WARM_START_CHECKS: dict[str, checks.Check] = {
    "workdir": checks.string(),
    "step": checks.optional_int_at_least(0),
    "params": checks.one_of(PARAMS_KINDS),
}


def _entries_rule(prefix: str, entry_checks: dict[str, checks.Check], *, closed: bool = True):
    """A rule checking every `config.PREFIX.NAME` entry as its own section."""

    def rule(config) -> list[str]:
        problems = []
        for name, entry in config[prefix].items():
            if not isinstance(entry, ml_collections.ConfigDict):
                problems.append(f"config.{prefix}.{name} = {entry!r} is invalid; allowed: a ConfigDict entry")
                continue
            problems += checks.Section(f"{prefix}.{name}", entry_checks, closed=closed).problems(config)
        return problems

    return rule


def train_sections(evaluator_kinds: tuple[str, ...]) -> list[checks.Section]:
    """The trainer's sections; `evaluator_kinds`: what `config.evals.*.kind` may name (the method's)."""
    return [
        checks.Section("", {"method": checks.string(), "seed": checks.int_at_least(0),
                            "compute_dtype": checks.one_of(COMPUTE_DTYPES),
                            "compilation_cache_dir": checks.string()}, closed=False),
        checks.Section("train", _TRAIN_CHECKS, rules=(_accumulation_rules,)),
        checks.Section("mesh", {"data": _MESH_AXIS, "fsdp": _MESH_AXIS, "fsdp_min_size": checks.int_at_least(1)},
                       rules=(_mesh_rules,)),
        distributed_section(),
        checks.Section("init_from", {**_WARM_START_CHECKS, "include": _REGEX},
                       rules=(_warm_start_rule("init_from", same_method=True),)),
        checks.Section("frozen_from", {}, closed=False, rules=(_entries_rule(
            "frozen_from", {**_WARM_START_CHECKS, "source": checks.string(), "target": checks.string()}),)),
        checks.Section("evals", {}, closed=False, rules=(_entries_rule(
            "evals", {"kind": checks.one_of(evaluator_kinds) if evaluator_kinds else
                      ((lambda v: False), "nothing: this method has no evaluators"),
                      "every": checks.int_at_least(0)}, closed=False),)),
        checks.Section("edit", {"input": _EDIT_INPUT, "output": checks.string()}, closed=False),
    ]


def validate_config(config: ml_collections.ConfigDict, method_class) -> None:
    """Checks the trainer's keys and the method's (`method_class.config_sections`) in one pass; raises one
    ValueError listing every problem. Pure Python: safe before `jax.distributed.initialize`."""
    sections = train_sections(method_class.evaluator_kinds) + list(method_class.config_sections(config))
    checks.validate(config, sections, "experiment")
