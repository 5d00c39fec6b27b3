"""Joining a multi-process (multi-host) JAX job: the `config.distributed.*` keys and `initialize_distributed`.

One process per host (or per GPU group); every process runs the same program, and `jax.distributed`
connects them so that `jax.devices()` lists every process's devices and one jitted step spans all of them.
With the keys left at their defaults JAX detects the job from its environment (Cloud TPU, SLURM, Open MPI,
Kubernetes, ...); on a plain set of machines name the coordinator and each process's id explicitly:

    # on every host, with PROCESS_ID = 0 on the host that runs the coordinator at 10.0.0.1:
    python main.py ... --config.distributed.initialize=True \
        --config.distributed.coordinator_address=10.0.0.1:1234 \
        --config.distributed.num_processes=2 --config.distributed.process_id=$PROCESS_ID

Ordering: joining must be the first thing in the process that touches a JAX backend. Anything that lists
devices (`jax.devices()`, `jax.process_index()`, `jax.local_devices()`), creates an array (`jnp.array`,
`jax.random.key`, a method's constructor building tables) or compiles initialises the backend as a single
process, after which it cannot join; `initialize_distributed` then raises instead of letting the job
fail obscurely later (a mesh of the wrong size, a hang in the first collective).
"""
from __future__ import annotations

import logging
import re

import jax
import ml_collections
from jax._src import xla_bridge
from ml_collections import config_dict

from editdiff import config_checks as checks

# On CPU, cross-process collectives (the all-reduce of the gradients) need an implementation; JAX 0.10
# defaults to gloo, but the option may be unset (None), which leaves multi-process CPU jobs without one.
CPU_COLLECTIVES_OPTION = "jax_cpu_collectives_implementation"
DEFAULT_CPU_COLLECTIVES = "gloo"


def default_distributed_config() -> ml_collections.ConfigDict:
    """The `config.distributed` keys; empty / None values are detected by JAX from the cluster's environment.

    Typed placeholders (rather than bare None) let `--config.distributed.num_processes=2` and
    `--config.distributed.local_device_ids='(0, 1)'` override them from the command line.
    """
    config = ml_collections.ConfigDict()
    # True on multi-process jobs (multi-host TPU/GPU, or several processes on one machine).
    config.initialize = False
    config.coordinator_address = ""  # "host:port" of process 0's coordinator service; "": auto-detect
    config.num_processes = config_dict.placeholder(int)  # None: auto-detect
    config.process_id = config_dict.placeholder(int)  # None: auto-detect; 0 runs the coordinator
    config.local_device_ids = config_dict.placeholder(tuple)  # this process's accelerators; None: all / auto
    return config


_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def _is_coordinator_address(value) -> bool:
    if not isinstance(value, str):
        return False
    if value == "":
        return True
    match = _HOST_PORT.match(value)
    return bool(match) and 1 <= int(match.group(1)) <= 65535


def _is_device_ids(value) -> bool:
    if value is None:
        return True
    if not isinstance(value, (list, tuple)) or not value:
        return False
    return all(checks.is_int(i) and i >= 0 for i in value) and len(set(value)) == len(value)


_AUTO_KEYS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")


def _process_id_pairing(config: ml_collections.ConfigDict) -> list[str]:
    d = config.distributed
    if (d.num_processes is None) != (d.process_id is None):
        return [
            f"config.distributed.num_processes = {d.num_processes!r}, config.distributed.process_id = "
            f"{d.process_id!r}: allowed: both set (each process its own id) or both None (auto-detect)"
        ]
    if d.num_processes is not None and d.process_id >= d.num_processes:
        return [
            f"config.distributed.process_id = {d.process_id!r} is invalid; allowed: an integer in "
            f"[0, config.distributed.num_processes = {d.num_processes})"
        ]
    return []


def _no_settings_without_initialize(config: ml_collections.ConfigDict) -> list[str]:
    """Setting the coordinator or the process ids without `initialize` would silently run single-process."""
    d = config.distributed
    if d.initialize:
        return []
    defaults = default_distributed_config()
    return [
        f"config.distributed.{key} = {d[key]!r} has no effect while config.distributed.initialize = False; "
        f"allowed: initialize = True, or {key} = {defaults[key]!r}"
        for key in _AUTO_KEYS
        if d[key] != defaults[key]
    ]


def distributed_section() -> checks.Section:
    """The validation table for `config.distributed.*`."""
    return checks.Section(
        prefix="distributed",
        checks={
            "initialize": checks.BOOLEAN,
            "coordinator_address": (
                _is_coordinator_address,
                "'' (auto-detect) or 'host:port' (port 1..65535; IPv6 hosts in brackets)",
            ),
            "num_processes": checks.optional_int_at_least(1),
            "process_id": checks.optional_int_at_least(0),
            "local_device_ids": (_is_device_ids, "None (auto) or a non-empty list of distinct integers >= 0"),
        },
        rules=(_process_id_pairing, _no_settings_without_initialize),
    )


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Joins the multi-process job when `config.distributed.initialize` is True; returns whether it joined now.

    Call it first, before anything touches a JAX backend (see the module docstring). Only the keys that are
    set are passed to `jax.distributed.initialize`; the rest JAX detects from the cluster. Calling it again
    in a process that has already joined (here or by a launcher) does nothing. Raises ValueError for invalid
    `config.distributed.*` values and RuntimeError when the backend was initialised before it was called.
    """
    checks.validate(config, [distributed_section()], "distributed")
    settings = config.distributed
    if not settings.initialize or jax.distributed.is_initialized():
        return False
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "config.distributed.initialize = True, but this process already initialised its JAX backend as a "
            "single process, so it can no longer join the job. initialize_distributed(config) must come before "
            "any JAX call that touches devices: jax.devices(), jax.process_index(), jax.local_devices(), "
            "creating an array (jnp.array, jax.random.key, a method's constructor), jit compilation. "
            "Move that call after initialize_distributed (or out of import time)."
        )
    if getattr(jax.config, CPU_COLLECTIVES_OPTION) is None:
        jax.config.update(CPU_COLLECTIVES_OPTION, DEFAULT_CPU_COLLECTIVES)
    kwargs = {}
    if settings.coordinator_address:
        kwargs["coordinator_address"] = settings.coordinator_address
    if settings.num_processes is not None:
        kwargs["num_processes"] = settings.num_processes
        kwargs["process_id"] = settings.process_id
    if settings.local_device_ids is not None:
        kwargs["local_device_ids"] = list(settings.local_device_ids)
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as error:  # JAX found neither the keys nor a cluster environment to fill them
        raise ValueError(
            f"jax.distributed.initialize could not start ({error}). Outside a cluster JAX detects (Cloud TPU, "
            "SLURM, Open MPI, Kubernetes, ...) set config.distributed.coordinator_address = 'host:port', "
            "config.distributed.num_processes and config.distributed.process_id."
        ) from error
    logging.info(
        "Joined the distributed job as process %d of %d (%d local of %d devices).",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True
