"""A run's model and train state on the mesh: fresh from the method, or from the newest checkpoint."""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx

from editdiff.methods.base import Method
from editdiff.train import mesh as mesh_lib
from editdiff.train.checkpoint import Checkpointer
from editdiff.train.config import validate_train_config
from editdiff.train.optimizer import create_optimizer
from editdiff.train.state import TrainState, init_train_state, split_model


def method_from_config(config: ml_collections.ConfigDict) -> Method:
    """The method named by `config.method`: module `editdiff.methods.<name>` and its class `METHOD`."""
    name = config.get("method")
    try:
        module = importlib.import_module(f"editdiff.methods.{name}")
    except ModuleNotFoundError as error:
        raise ValueError(
            f"config.method = {name!r} is invalid; allowed: the name of a module in editdiff.methods"
        ) from error
    return module.METHOD(config)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins the multi-host job when config.distributed.initialize asks (once per process; the cluster's
    environment tells JAX the coordinator). Must run before anything touches the devices."""
    if config.distributed.initialize and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def create_checkpointer(config: ml_collections.ConfigDict, workdir: str) -> Checkpointer:
    """The run's Checkpointer as the config's train.* keys describe it."""
    return Checkpointer(
        workdir,
        keep=config.train.keep_checkpoints,
        every=config.train.checkpoint_every,
        async_save=config.train.async_checkpointing,
    )


@dataclasses.dataclass(frozen=True)
class RunState:
    """The model split for training, placed on the mesh: `nnx.merge(graphdef, state.params, frozen)` is the
    model; the shardings are the layouts the jitted step keeps them in."""

    graphdef: nnx.GraphDef
    frozen: nnx.State
    state: TrainState
    state_sharding: Any
    frozen_sharding: Any

    def model(self, *, ema: bool = True) -> nnx.Module:
        """The whole model with the EMA (default) or the raw trainable parameters, plus the frozen rest."""
        return nnx.merge(self.graphdef, self.state.ema_params if ema else self.state.params, self.frozen)


def build_run_state(
    config: ml_collections.ConfigDict,
    method: Method,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    checkpointer: Checkpointer,
) -> RunState:
    """Builds the method's model (seeded by config.seed), splits it by the method's trainable filter and lays
    it out on the mesh; the train state is restored from the newest readable checkpoint, else fresh (step 0).
    The frozen rest always comes from the method (pretrained weights or the seed), never from a checkpoint."""
    graphdef, params, frozen = split_model(method.init_model(nnx.Rngs(config.seed)), method.trainable)
    abstract_state = jax.eval_shape(lambda p: init_train_state(p, optimizer), params)
    state_sharding = mesh_lib.state_sharding(mesh, abstract_state, config.mesh.fsdp_min_size)
    frozen_sharding = mesh_lib.state_sharding(mesh, frozen, config.mesh.fsdp_min_size)
    restore_target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sharding
    )
    state = checkpointer.restore_latest(restore_target)
    if state is None:
        state = jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=state_sharding)(params)
    return RunState(graphdef, jax.device_put(frozen, frozen_sharding), state, state_sharding, frozen_sharding)


def load_trained_model(
    config: ml_collections.ConfigDict, workdir: str, *, method: Method | None = None, ema: bool = True
) -> tuple[nnx.Module, int]:
    """The model of the newest readable checkpoint in `workdir` (EMA parameters by default) and its step,
    for sampling, evaluation and export. Raises FileNotFoundError when the workdir holds no checkpoint."""
    validate_train_config(config)
    initialize_distributed(config)
    method = method or method_from_config(config)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"No checkpoints in {workdir}: train first (main.py --mode=train)")
    checkpointer = create_checkpointer(config, workdir)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"No checkpoints in {checkpointer.directory}: train first (main.py --mode=train)")
        mesh = mesh_lib.create_mesh(config.mesh)
        run = build_run_state(config, method, mesh, create_optimizer(config.train), checkpointer)
    finally:
        checkpointer.close()
    step = int(run.state.step)
    logging.info("Loaded the %s parameters of step %d from %s", "EMA" if ema else "raw", step, workdir)
    return run.model(ema=ema), step
