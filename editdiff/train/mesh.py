"""The device mesh ("data", "fsdp") and how batches and train state are laid out on it.

Batches are split along their leading dimension over both axes (every device sees a different slice).
State arrays are fully sharded (FSDP) along one axis over "fsdp" when they are large enough and an axis
divides evenly, and replicated otherwise; with fsdp = 1 everything is replicated (plain data parallelism).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from editdiff.config_checks import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every device


def create_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
    """A ("data", "fsdp") mesh of shape (mesh.data, mesh.fsdp); a -1 takes all remaining devices.

    On one host a mesh smaller than the machine uses the first devices (with a warning); on several hosts it
    must cover every device. Raises ValueError naming the keys when the shape does not fit the devices.
    """
    num_devices = jax.device_count()
    data, fsdp = mesh_config.data, mesh_config.fsdp
    fixed = data if fsdp == -1 else fsdp
    if -1 in (data, fsdp):
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh.data = {data}, config.mesh.fsdp = {fsdp}: the fixed axis must divide the "
                f"{num_devices} devices"
            )
        data, fsdp = (num_devices // fsdp, fsdp) if data == -1 else (data, num_devices // data)
    size = data * fsdp
    if size > num_devices or (size < num_devices and jax.process_count() > 1):
        raise ConfigError(
            f"config.mesh.data = {mesh_config.data}, config.mesh.fsdp = {mesh_config.fsdp} asks for {size} "
            f"devices; allowed: a product equal to the {num_devices} devices (or -1 on one axis)"
        )
    devices = jax.devices()
    if size < num_devices:
        logging.warning("Mesh (data=%d, fsdp=%d) uses %d of %d devices.", data, fsdp, size, num_devices)
        devices = devices[:size]
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def array_sharding(mesh: Mesh, shape: tuple[int, ...], fsdp_min_size: int) -> NamedSharding:
    """FSDP sharding for one state array: its largest dimension divisible by the fsdp axis is split over it,
    when the array has at least `fsdp_min_size` elements; replicated otherwise."""
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
        return NamedSharding(mesh, PartitionSpec())
    divisible = [axis for axis, dim in enumerate(shape) if dim % fsdp == 0]
    if not divisible:
        return NamedSharding(mesh, PartitionSpec())
    axis = max(divisible, key=lambda a: shape[a])
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_sharding(mesh: Mesh, abstract_state: Any, fsdp_min_size: int) -> Any:
    """A pytree of NamedShardings matching `abstract_state` (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: array_sharding(mesh, tuple(x.shape), fsdp_min_size), abstract_state)


def global_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's slice of the batch (dict of `(B_local, ...)` arrays) as global arrays `(B_global, ...)`
    sharded over the mesh, B_global = B_local * process_count. Raises ValueError when B_global does not
    split evenly over the mesh's devices."""
    sharding = batch_sharding(mesh)
    result = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_size = value.shape[0] * jax.process_count()
        if global_size % mesh.size:
            raise ValueError(
                f"Batch field {name!r}: global batch size {global_size} does not split over the "
                f"{mesh.size} devices of the mesh {dict(mesh.shape)}; use a multiple of {mesh.size}"
            )
        result[name] = jax.make_array_from_process_local_data(sharding, value)
    return result
