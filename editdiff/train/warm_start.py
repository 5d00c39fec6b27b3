"""Parameters from another run's workdir: `config.init_from` (warm start) and `config.frozen_from` (frozen
parts trained elsewhere).

Both read the other run's checkpoint through a read-only Checkpointer (the other run may still be
training), take its EMA or raw trainable parameters (never its optimiser state), and copy them by path into
this run's parameters; a warm start also copies the BatchNorm statistics under the selected paths, which belong
with the parameters they were gathered for. Paths are written dotted, e.g. `head.layers.0.kernel`. A missing workdir, a workdir
of another method, a missing path or a shape that differs is a ValueError naming them.
"""
from __future__ import annotations

import logging
import re
from typing import Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from editdiff.train.checkpoint import Checkpointer
from editdiff.workdirs import is_run_workdir, read_saved_config

_MAX_LISTED = 8


def dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def _listed(paths: list[str]) -> str:
    more = len(paths) - _MAX_LISTED
    return ", ".join(paths[:_MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")


def run_workdir_problem(workdir: str, *, method: str | None, key: str) -> str | None:
    """Why `workdir` cannot serve `config.KEY.workdir` (not a training run's workdir, or a run of another method
    than `method`; None: any), or None when it can. Reads config.json only."""
    saved = read_saved_config(workdir)
    if not is_run_workdir(workdir):
        return (f"config.{key}.workdir = {workdir!r} is invalid; allowed: the workdir of a training run "
                "(config.json and checkpoints/)")
    if method is not None and saved.get("method") != method:
        return f"config.{key}.workdir = {workdir!r} is a {saved.get('method')!r} run; allowed: a {method!r} run"
    return None


def read_run_parameters(workdir: str, *, step: int | None, params: str, method: str | None, key: str
                        ) -> tuple[int, dict[str, np.ndarray]]:
    """(step, {dotted path: array}) of the `params` ("ema" or "params" trainable parameters, or "model_state":
    the non-parameter variables) of another run's checkpoint (newest, or `step`). `method`: the method that
    run must be (None: any); `key`: the config key being served, for messages."""
    problem = run_workdir_problem(workdir, method=method, key=key)
    if problem:
        raise ValueError(problem)
    part = {"ema": "ema_params", "params": "params", "model_state": "model_state"}[params]
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        step = step if step is not None else checkpointer.latest_step()
        if step is None:
            raise ValueError(f"config.{key}.workdir = {workdir!r} holds no checkpoint yet")
        tree = checkpointer.read_part(step, part)
    finally:
        checkpointer.close()
    flat = {}
    for path, value in ocp.tree.to_flat_dict(tree).items():
        # An nnx Variable is stored as a node with one leaf `value`.
        names = [str(p) for p in path]
        flat[".".join(names[:-1] if names[-1] == "value" else names)] = np.asarray(value)
    logging.info("Read %d %s arrays of step %d from %s (config.%s)", len(flat), part, step, workdir, key)
    return step, flat


def _replace(state: nnx.State, values: Mapping[str, np.ndarray], key: str) -> None:
    """Sets each dotted path of `state` to the value given, in the variable's dtype and sharding."""
    variables = {dotted(path): variable for path, variable in nnx.to_flat_state(state)}
    wrong = [f"{p}: stored {tuple(v.shape)}, this model {tuple(variables[p][...].shape)}"
             for p, v in values.items() if tuple(v.shape) != tuple(variables[p][...].shape)]
    if wrong:
        raise ValueError(f"config.{key}: shapes differ: {_listed(wrong)}")
    for path, value in values.items():
        current = variables[path][...]
        variables[path].set_value(jax.device_put(np.asarray(value, current.dtype), current.sharding))


def apply_init_from(params: nnx.State, model_state: nnx.State, config: ml_collections.ConfigDict) -> list[str]:
    """Overwrites the trainable `params` selected by `config.init_from.include` with the other run's, and the
    BatchNorm statistics of `model_state` under the same selection with its statistics; returns the dotted
    paths set. Every selected path must exist there with the same shape."""
    init_from = config.init_from
    step, source = read_run_parameters(init_from.workdir, step=init_from.step, params=init_from.params,
                                       method=config.method, key="init_from")
    pattern = re.compile(init_from.include)
    selected = [dotted(path) for path, _ in nnx.to_flat_state(params) if pattern.search(dotted(path))]
    if not selected:
        raise ValueError(f"config.init_from.include = {init_from.include!r} selects no trainable parameter")
    missing = [p for p in selected if p not in source]
    if missing:
        raise ValueError(f"config.init_from.workdir = {init_from.workdir!r} lacks these trainable parameters: "
                         f"{_listed(missing)}")
    _replace(params, {p: source[p] for p in selected}, "init_from")
    selected_statistics = [dotted(path) for path, variable in nnx.to_flat_state(model_state)
                           if isinstance(variable, nnx.BatchStat) and pattern.search(dotted(path))]
    if selected_statistics:
        _, stored = read_run_parameters(init_from.workdir, step=step, params="model_state", method=config.method,
                                        key="init_from")
        missing = [p for p in selected_statistics if p not in stored]
        if missing:
            raise ValueError(f"config.init_from.workdir = {init_from.workdir!r} lacks these BatchNorm statistics: "
                             f"{_listed(missing)}")
        _replace(model_state, {p: stored[p] for p in selected_statistics}, "init_from")
    logging.info("Initialised %d trainable arrays and %d BatchNorm statistics from %s (config.init_from)",
                 len(selected), len(selected_statistics), init_from.workdir)
    return selected + selected_statistics


def apply_frozen_from(frozen: nnx.State, config: ml_collections.ConfigDict) -> list[str]:
    """Fills, for each `config.frozen_from.NAME`, the frozen subtree `target` with the other run's trainable
    subtree `source`; returns the dotted paths set. The two subtrees must hold the same paths and shapes."""
    frozen_paths = [dotted(path) for path, _ in nnx.to_flat_state(frozen)]
    written = []
    for name, entry in config.frozen_from.items():
        key = f"frozen_from.{name}"
        _, source = read_run_parameters(entry.workdir, step=entry.step, params=entry.params, method=None, key=key)
        source_prefix = entry.source + "." if entry.source else ""
        target_prefix = entry.target + "." if entry.target else ""
        values = {target_prefix + p[len(source_prefix):]: v for p, v in source.items() if p.startswith(source_prefix)}
        if not values:
            raise ValueError(f"config.{key}.source = {entry.source!r} names no parameters of {entry.workdir}")
        targets = {p for p in frozen_paths if p.startswith(target_prefix)}
        unknown, unfilled = sorted(set(values) - targets), sorted(targets - set(values))
        if unknown or unfilled:
            raise ValueError(
                f"config.{key}: the subtree {entry.source or '(all)'} of {entry.workdir} does not fit the frozen "
                f"subtree {entry.target or '(all)'} of this model; not in this model: {_listed(unknown) or 'none'}; "
                f"not in {entry.workdir}: {_listed(unfilled) or 'none'}")
        _replace(frozen, values, key)
        written += sorted(values)
        logging.info("Loaded %d frozen arrays into %s from %s (config.%s)", len(values), entry.target or "(all)",
                     entry.workdir, key)
    return written

