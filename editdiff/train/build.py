"""A run's model and train state on the mesh: built abstractly, created directly in its sharded layout, then
filled from the newest checkpoint, the method's pretrained weights and other runs' workdirs.

Where every part of the state comes from:

    trainable params, EMA, optimiser state,   the newest readable checkpoint when there is one; else
    model state (BatchNorm statistics, ...)   `init_model` under jax.jit (sharded), then the method's
                                              pretrained values, then `config.init_from`
    frozen params                             `init_model` under jax.jit, the method's pretrained values and
                                              `config.frozen_from`, at every start (never checkpointed)

Nothing is initialised eagerly: the model is traced with `nnx.eval_shape`, a resumed run only creates its
frozen part, and no random value is drawn for a parameter the method's pretrained weights replace (XLA drops
those parts of the initialiser).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, Collection, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from editdiff.config_checks import ConfigError
from editdiff.methods.base import Method
from editdiff.tracing import abstract_module, linear_time_probes
from editdiff.train import mesh as mesh_lib
from editdiff.train.checkpoint import (
    CheckpointMismatchError,
    Checkpointer,
    config_differences,
    state_tree,
    train_state_from_tree,
)
from editdiff.train.state import TrainState, init_train_state, split_model
from editdiff.train.warm_start import apply_frozen_from, apply_init_from, dotted
from editdiff.workdirs import read_saved_config

_MAX_CONFIG_LINES = 8


class ConfigChangedError(ConfigError):
    """The workdir's checkpoint was written by a config whose model or optimiser differs from this one."""


def method_class(config: ml_collections.ConfigDict) -> type[Method]:
    """The class `METHOD` of module `editdiff.methods.<config.method>`, or of the importable module named
    `config.method` (a method of your own outside this package); imported, not constructed."""
    name = config.get("method")
    for module_name in (f"editdiff.methods.{name}", name):
        try:
            module = importlib.import_module(module_name)
        except (ModuleNotFoundError, TypeError, ValueError):
            continue
        if isinstance(getattr(module, "METHOD", None), type) and issubclass(module.METHOD, Method):
            return module.METHOD
    raise ValueError(f"config.method = {name!r} is invalid; allowed: the name of a module in editdiff.methods "
                     "(or an importable module) that defines METHOD, a Method subclass")


def create_checkpointer(config: ml_collections.ConfigDict, workdir: str, *, read_only: bool = False) -> Checkpointer:
    """The run's Checkpointer as the config's train.* keys describe it."""
    return Checkpointer(
        workdir,
        keep=config.train.keep_checkpoints,
        every=config.train.checkpoint_every,
        async_save=config.train.async_checkpointing,
        read_only=read_only,
    )


@dataclasses.dataclass(frozen=True)
class RunState:
    """The model split for training, placed on the mesh: `model()` merges it back; the shardings are the
    layouts the jitted step keeps the state and the frozen parameters in."""

    graphdef: nnx.GraphDef
    frozen: nnx.State
    state: TrainState
    state_sharding: Any
    frozen_sharding: Any

    def model(self, *, ema: bool = True) -> nnx.Module:
        """The whole model with the EMA (default) or the raw trainable parameters, the model state and the
        frozen rest."""
        params = self.state.ema_params if ema else self.state.params
        return nnx.merge(self.graphdef, params, self.state.model_state, self.frozen)


@dataclasses.dataclass(frozen=True)
class _ModelLayout:
    """The abstract split of the method's model and the shardings of its three states."""

    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State
    frozen: nnx.State
    params_sharding: Any
    model_state_sharding: Any
    frozen_sharding: Any


def _model_layout(method: Method, seed: int, mesh: jax.sharding.Mesh, fsdp_min_size: int) -> _ModelLayout:
    graphdef, params, model_state, frozen = split_model(
        abstract_module(lambda: method.init_model(nnx.Rngs(seed))), method.trainable)
    shard = lambda tree: mesh_lib.state_sharding(mesh, tree, fsdp_min_size)  # noqa: E731
    return _ModelLayout(graphdef, params, model_state, frozen, shard(params), shard(model_state), shard(frozen))


def _initialise(method: Method, seed: int, layout: _ModelLayout, *, parts: tuple[int, ...],
                replaced: Collection[tuple] = ()):
    """The states at `parts` (0 params, 1 model state, 2 frozen) of `init_model`, created by one jitted
    initialiser directly in their shardings. What is not asked for, and the random values of the paths in
    `replaced` (zeros here: the caller writes them next), are dead code to XLA, which then neither compiles
    nor runs their initialisers (the bulk of a pretrained model's init)."""
    shardings = (layout.params_sharding, layout.model_state_sharding, layout.frozen_sharding)

    def init():
        states = split_model(method.init_model(nnx.Rngs(seed)), method.trainable)[1:]
        for i in parts:
            for path, variable in nnx.to_flat_state(states[i]):
                if path in replaced:
                    value = variable[...]
                    variable.set_value(jnp.zeros(value.shape, value.dtype))
        return tuple(states[i] for i in parts)

    with linear_time_probes():  # the trace (the first call) draws every initialiser's random values
        return jax.jit(init, out_shardings=tuple(shardings[i] for i in parts))()


def _fill_pretrained(states: Mapping[str, nnx.State], pretrained: Mapping[tuple, np.ndarray]) -> None:
    """Writes each pretrained value into whichever of `states` (by name) holds its path; a path in none of
    them (of the given ones, or of the model at all) is an error."""
    variables = {}
    for name, state in states.items():
        variables.update({path: (name, variable) for path, variable in nnx.to_flat_state(state)})
    unknown = [dotted(path) for path in pretrained if path not in variables]
    if unknown:
        raise ValueError(f"The method's pretrained weights name paths that are not in the model: {unknown[:8]}")
    for path, value in pretrained.items():
        _, variable = variables[path]
        current = variable[...]
        if tuple(value.shape) != tuple(current.shape):
            raise ValueError(f"Pretrained {dotted(path)}: shape {tuple(value.shape)}, the model has "
                             f"{tuple(current.shape)}")
        variable.set_value(jax.device_put(np.asarray(value, current.dtype), current.sharding))


def _frozen_values(layout: _ModelLayout, pretrained: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    """The pretrained values that belong to the frozen parameters."""
    frozen_paths = {path for path, _ in nnx.to_flat_state(layout.frozen)}
    return {path: value for path, value in pretrained.items() if path in frozen_paths}


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def _changed_config_error(error: CheckpointMismatchError, config: ml_collections.ConfigDict, workdir: str):
    changed = config_differences(read_saved_config(workdir), config)
    listed = changed[:_MAX_CONFIG_LINES] + ([f"... and {len(changed) - _MAX_CONFIG_LINES} more"]
                                            if len(changed) > _MAX_CONFIG_LINES else [])
    return ConfigChangedError(
        f"Cannot resume {workdir}: its checkpoint of step {error.step} does not fit this config.\n"
        f"  Config keys that differ from {os.path.join(workdir, 'config.json')}:\n    "
        + ("\n    ".join(listed) if listed else "(none: the saved config is missing or equal)") + "\n"
        f"  Arrays whose stored and requested shapes differ ({len(error.differences)}):\n    "
        + "\n    ".join(error.listed()) + "\n"
        "  Nothing was changed. Resume with the saved config, or train in a new --workdir (with "
        "config.init_from.workdir to warm-start from this one)."
    )


def build_run_state(
    config: ml_collections.ConfigDict,
    method: Method,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    checkpointer: Checkpointer,
    workdir: str,
) -> RunState:
    """The train state restored from the newest readable checkpoint, else fresh (step 0), and the frozen
    parameters, all on the mesh (see the module docstring for where each part comes from). Raises
    ConfigChangedError (short, naming the differing config keys and arrays) when the checkpoint does not fit
    the config."""
    layout = _model_layout(method, config.seed, mesh, config.mesh.fsdp_min_size)
    abstract_state = jax.eval_shape(lambda p, m: init_train_state(p, m, optimizer), layout.params,
                                    layout.model_state)
    state_sharding = TrainState(
        step=mesh_lib.state_sharding(mesh, abstract_state.step, config.mesh.fsdp_min_size),
        params=layout.params_sharding,
        opt_state=mesh_lib.state_sharding(mesh, abstract_state.opt_state, config.mesh.fsdp_min_size),
        ema_params=layout.params_sharding,
        model_state=layout.model_state_sharding,
    )
    try:
        restored = checkpointer.restore_latest(state_tree(_with_shardings(abstract_state, state_sharding)))
    except CheckpointMismatchError as error:
        raise _changed_config_error(error, config, workdir) from None
    pretrained = method.pretrained_state()
    if restored is not None:
        state = train_state_from_tree(restored[1])
        frozen_pretrained = _frozen_values(layout, pretrained)
        (frozen,) = _initialise(method, config.seed, layout, parts=(2,), replaced=frozen_pretrained)
        _fill_pretrained({"frozen": frozen}, frozen_pretrained)
    else:
        params, model_state, frozen = _initialise(method, config.seed, layout, parts=(0, 1, 2), replaced=pretrained)
        _fill_pretrained({"params": params, "frozen": frozen}, pretrained)
        if config.init_from.workdir:
            apply_init_from(params, model_state, config)
        state = jax.jit(lambda p, m: init_train_state(p, m, optimizer), out_shardings=state_sharding,
                        donate_argnums=0)(params, model_state)
    if config.frozen_from:
        apply_frozen_from(frozen, config)
    return RunState(layout.graphdef, frozen, state, state_sharding, layout.frozen_sharding)


def initial_model(method: Method, seed: int = 0) -> nnx.Module:
    """The model a fresh run of `method` starts from: `init_model(nnx.Rngs(seed))` with the method's pretrained
    values written in (no random value drawn for them), on this process's first device, without
    config.init_from or frozen_from. For tests and tools that need the starting model without a run."""
    mesh = jax.make_mesh((1, 1), mesh_lib.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=jax.local_devices()[:1])
    layout = _model_layout(method, seed, mesh, fsdp_min_size=0)
    pretrained = method.pretrained_state()
    params, model_state, frozen = _initialise(method, seed, layout, parts=(0, 1, 2), replaced=pretrained)
    _fill_pretrained({"params": params, "frozen": frozen}, pretrained)
    states = jax.tree.map(_uncommitted, (params, model_state, frozen))
    return nnx.merge(layout.graphdef, *states)


def _uncommitted(x: jax.Array) -> jax.Array:
    """`x` as an uncommitted default-device array, as eager code makes one (PRNG keys too): arrays committed
    to a mesh beside eager ones (an optimiser's step count) would give a first jitted call a program its
    later calls cannot reuse."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_uncommitted(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return jnp.asarray(np.asarray(x))


def load_trained_model(
    config: ml_collections.ConfigDict, workdir: str, method: Method, mesh: jax.sharding.Mesh, *,
    ema: bool = True, step: int | None = None,
) -> tuple[nnx.Module, int]:
    """The model of the newest readable checkpoint in `workdir` (or of `step`) with its EMA (default) or raw
    parameters and its model state — no optimiser state is read — and its step, for evaluation, sampling
    and export. Reads only: works while a training run is writing the workdir. Raises FileNotFoundError
    when the workdir holds no checkpoint."""
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"No checkpoints in {checkpointer.directory}: train first (main.py --mode=train)")
        layout = _model_layout(method, config.seed, mesh, config.mesh.fsdp_min_size)
        part = "ema_params" if ema else "params"
        abstract = {part: _with_shardings(layout.params, layout.params_sharding),
                    "model_state": _with_shardings(layout.model_state, layout.model_state_sharding)}
        try:
            step, restored = checkpointer.restore_latest(abstract, step=step)
        except CheckpointMismatchError as error:
            raise _changed_config_error(error, config, workdir) from None
    finally:
        checkpointer.close()
    frozen_pretrained = _frozen_values(layout, method.pretrained_state())
    (frozen,) = _initialise(method, config.seed, layout, parts=(2,), replaced=frozen_pretrained)
    _fill_pretrained({"frozen": frozen}, frozen_pretrained)
    if config.frozen_from:
        apply_frozen_from(frozen, config)
    logging.info("Loaded the %s parameters of step %d from %s", "EMA" if ema else "raw", step, workdir)
    return nnx.merge(layout.graphdef, restored[part], restored["model_state"], frozen), step
