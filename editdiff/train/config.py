"""The trainer's configuration keys: defaults and the one validation pass run before anything compiles.

An experiment config (`configs/*.py`) starts from `default_train_config()` and adds the method's and the
data's keys. `validate_train_config` checks every trainer key and raises one ValueError listing each invalid
value with its key and what is allowed.
"""
from __future__ import annotations

import ml_collections

from editdiff import config_checks as checks

SCHEDULES = ("constant", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")


def default_train_config() -> ml_collections.ConfigDict:
    """The trainer's keys with defaults sized for a short CPU run."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Parameters are always float32; this is the dtype the method computes activations in.
    config.compute_dtype = "float32"

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 1000
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.schedule = "constant"
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
    # Sample and eval hooks run every N steps and after the last step; 0: after the last step only.
    config.train.sample_every = 0
    config.train.eval_every = 0
    config.train.profile_steps = 0  # 0: no profile

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by the other axis
    config.mesh.fsdp = 1
    # Arrays with fewer elements stay replicated: sharding them saves little memory and costs collectives.
    config.mesh.fsdp_min_size = 2**14

    config.distributed = ml_collections.ConfigDict()
    config.distributed.initialize = False  # True on multi-host GPU/TPU jobs: calls jax.distributed.initialize()
    return config


_MESH_AXIS: checks.Check = ((lambda v: checks.is_int(v) and (v >= 1 or v == -1)),
                             "an integer >= 1, or -1 for all remaining devices")

_CHECKS: dict[str, checks.Check] = {
    "seed": checks.int_at_least(0),
    "compute_dtype": checks.one_of(COMPUTE_DTYPES),
    "train.num_steps": checks.int_at_least(1),
    "train.learning_rate": checks.number_above(0),
    "train.warmup_steps": checks.int_at_least(0),
    "train.schedule": checks.one_of(SCHEDULES),
    "train.adam_b1": checks.number_in(0, 1, high_open=True),
    "train.adam_b2": checks.number_in(0, 1, high_open=True),
    "train.adam_eps": checks.number_above(0),
    "train.weight_decay": checks.number_at_least(0),
    "train.grad_clip_norm": checks.number_at_least(0),
    "train.grad_accum_steps": checks.int_at_least(1),
    "train.ema_decay": checks.number_in(0, 1, high_open=True),
    "train.log_every": checks.int_at_least(1),
    "train.checkpoint_every": checks.int_at_least(1),
    "train.keep_checkpoints": checks.int_at_least(1),
    "train.async_checkpointing": checks.BOOLEAN,
    "train.sample_every": checks.int_at_least(0),
    "train.eval_every": checks.int_at_least(0),
    "train.profile_steps": checks.int_at_least(0),
    "mesh.data": _MESH_AXIS,
    "mesh.fsdp": _MESH_AXIS,
    "mesh.fsdp_min_size": checks.int_at_least(1),
    "distributed.initialize": checks.BOOLEAN,
}


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    """Raises one ValueError listing every invalid or missing trainer key as `key = value: allowed`."""
    problems = checks.find_problems(config, _CHECKS)
    if not problems:
        if config.mesh.data == -1 and config.mesh.fsdp == -1:
            problems.append("config.mesh.data = -1 and config.mesh.fsdp = -1: at most one mesh axis may be -1")
        if config.train.num_steps % config.train.grad_accum_steps:
            problems.append(
                f"config.train.num_steps = {config.train.num_steps} is invalid; allowed: a multiple of "
                f"config.train.grad_accum_steps = {config.train.grad_accum_steps}"
            )
    checks.raise_problems(problems, "training")
