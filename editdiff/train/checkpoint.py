"""Orbax checkpoints of the train state under `WORKDIR/checkpoints`, and the run's config beside them.

Saves are asynchronous (training goes on while the previous state is written; Orbax writes into a temporary
directory and renames it when complete, so a killed save leaves no half checkpoint), keep the newest N, and
happen every `checkpoint_every` steps plus on demand (final step, preemption).

Restoring distinguishes two failures:
- a checkpoint that does not fit the requested structure (another model or optimiser config): the stored
  and requested shapes are compared from the checkpoint's metadata before any array is read, and a
  `CheckpointMismatchError` lists the differing paths. Nothing falls back and nothing moves.
- a checkpoint that cannot be read (damaged, truncated): reported loudly and the previous one tried; once an
  older one restores, a training run moves the unreadable newer ones to `WORKDIR/corrupt_checkpoints/`. If
  none restores, `CheckpointRestoreError`: a run never silently starts again from scratch.

A read-only Checkpointer (evaluation, sampling, export, warm starts from another run) never writes, moves or
deletes anything, so it can read the workdir of a run that is still training.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as save_policies

from editdiff.train.state import TrainState
from editdiff.workdirs import CONFIG_NAME, PREVIOUS_CONFIG_NAME, read_saved_config

TRAIN_STATE_PARTS = ("step", "params", "opt_state", "ema_params", "model_state")
_MAX_LISTED = 8  # differing paths listed in a mismatch error before "... and N more"


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist in the workdir but none of them can be read."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose stored arrays do not fit the requested structure.

    `differences`: one line per differing path, `path: stored SHAPE, requested SHAPE` (or missing on one
    side)."""

    def __init__(self, directory: str, step: int, differences: list[str]):
        self.directory, self.step, self.differences = directory, step, differences
        super().__init__(f"The checkpoint of step {step} in {directory} does not fit the requested model; "
                         f"arrays that differ:\n    " + "\n    ".join(self.listed()))

    def listed(self) -> list[str]:
        """The first differences, then '... and N more'."""
        more = len(self.differences) - _MAX_LISTED
        return self.differences[:_MAX_LISTED] + ([f"... and {more} more"] if more > 0 else [])


def state_tree(state: TrainState) -> dict[str, Any]:
    """The train state as a dict of its parts (what a checkpoint stores, partly restorable by part name)."""
    return {part: getattr(state, part) for part in TRAIN_STATE_PARTS}


def train_state_from_tree(tree: Mapping[str, Any]) -> TrainState:
    return TrainState(**{part: tree[part] for part in TRAIN_STATE_PARTS})


def _stored_shape(leaf: Any) -> tuple:
    """The shape a leaf has on disk: a typed PRNG key array is stored as its key data."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(leaf.shape)


def _shapes(tree: Any) -> dict[str, tuple]:
    return {path: _stored_shape(leaf) for path, leaf in ocp.tree.to_flat_dict(tree, sep=".").items()
            if hasattr(leaf, "shape")}


def shape_differences(stored: Any, requested: Any) -> list[str]:
    """`path: stored (..), requested (..)` for every array path whose presence or shape differs."""
    stored_shapes, requested_shapes = _shapes(stored), _shapes(requested)
    lines = []
    for path in sorted(stored_shapes.keys() | requested_shapes.keys()):
        have, want = stored_shapes.get(path), requested_shapes.get(path)
        if have != want:
            lines.append(f"{path}: stored {have if have is not None else 'nothing'}, "
                         f"requested {want if want is not None else 'nothing'}")
    return lines


# How often a read-only restore lists the steps again when every listed one vanished under a live run.
RELISTINGS = 3


class Checkpointer:
    """The run's Orbax CheckpointManager plus restore-with-fallback."""

    def __init__(self, workdir: str, *, keep: int = 1, every: int = 1, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.quarantine_directory = os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")
        self.read_only = read_only
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
                # Orbax's default also saves the first step of every run; only the interval and preemption
                # should cost a (possibly multi-GB) write.
                save_decision_policy=save_policies.AnySavePolicy(
                    [save_policies.FixedIntervalPolicy(every), save_policies.PreemptionCheckpointingPolicy()]
                ),
            )
        # An explicit handler: a manager that has not saved in this process (a resumed or read-only one)
        # must still know how to read metadata and restore parts of the tree.
        self._manager = self._open(options)

    def _open(self, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
        """The manager over the directory. Opening lists every step and reads each one's commit time: a live run
        that prunes a step in between makes a read-only reader's listing fail, so it lists again (RELISTINGS)."""
        for attempt in range(RELISTINGS):
            try:
                return ocp.CheckpointManager(self.directory, item_handlers=ocp.PyTreeCheckpointHandler(),
                                             options=options)
            except FileNotFoundError:
                if not self.read_only or attempt == RELISTINGS - 1:
                    raise
                logging.warning("A checkpoint of %s vanished while listing (the live run pruned it); listing again",
                                self.directory)
        raise AssertionError("unreachable")

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (an unfinished or killed save is not among them)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether the save policy (the interval, a preemption) asks for a checkpoint at `step`."""
        return self._manager.should_save(step)

    def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
        """Starts saving `state` as `step` if the interval (or `force`) asks and it is not saved yet; returns
        whether a save started. The write finishes in the background."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(step, args=ocp.args.PyTreeSave(state_tree(state)), force=force)

    def reached_preemption(self, step: int) -> bool:
        """Whether the multi-host preemption service (jax.distributed) asked every process to stop."""
        return self._manager.reached_preemption(step)

    def stored_structure(self, step: int) -> Any:
        """The checkpoint's stored tree of array metadata (shape, dtype), read without reading any array.
        Raises when the metadata cannot be read."""
        metadata = self._manager.item_metadata(step)
        tree = getattr(metadata, "tree", metadata)
        if tree is None:
            raise FileNotFoundError(f"no readable metadata for step {step} in {self.directory}")
        return tree

    def restore(self, step: int, abstract: Mapping[str, Any]) -> dict[str, Any]:
        """The parts named by `abstract`'s keys (some of TRAIN_STATE_PARTS) of step `step`, restored into the
        structure, dtypes and shardings of `abstract` (pytrees of jax.ShapeDtypeStruct with sharding).
        Raises CheckpointMismatchError when the stored shapes differ; other exceptions when unreadable."""
        stored = self.stored_structure(step)
        differences = shape_differences({k: stored[k] for k in abstract if k in stored}, abstract)
        if differences:
            raise CheckpointMismatchError(self.directory, step, differences)
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        return self._manager.restore(step, args=ocp.args.PyTreeRestore(
            item=dict(abstract), restore_args=restore_args, partial_restore=True))

    def read_part(self, step: int, part: str) -> Any:
        """One part (e.g. "ema_params") of step `step` as a tree of numpy arrays, in its stored structure."""
        stored = self.stored_structure(step)[part]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
        return self._manager.restore(step, args=ocp.args.PyTreeRestore(
            item={part: stored}, restore_args={part: restore_args}, partial_restore=True))[part]

    def restore_latest(self, abstract: Mapping[str, Any], *, step: int | None = None) -> tuple[int, dict] | None:
        """(step, parts) of the newest readable checkpoint (or of `step` when given), restored as `restore`
        does; None when there is none.

        Each unreadable checkpoint is logged as an error and the previous one tried (with `step` given, the
        error is raised). A writable Checkpointer moves newer unreadable ones to the quarantine directory once
        an older one restores. A CheckpointMismatchError propagates at once: a checkpoint that does not fit
        is the config's problem, not damage. A read-only reader (eval, export, edit of a live run) whose listed
        steps all vanished lists again (RELISTINGS times): the run saved and pruned meanwhile.
        """
        if step is not None:
            if step not in self.all_steps():
                raise FileNotFoundError(f"No checkpoint of step {step} in {self.directory}; "
                                        f"there are: {self.all_steps() or 'none'}")
            return step, self.restore(step, abstract)
        for _ in range(RELISTINGS):
            listed = self.all_steps()
            failures = []
            for candidate in reversed(listed):
                try:
                    parts = self.restore(candidate, abstract)
                except CheckpointMismatchError:
                    raise
                except Exception as error:  # noqa: BLE001 -- any failure to read means: try the previous one
                    logging.error(
                        "CHECKPOINT AT STEP %d IN %s CANNOT BE READ (%s: %s); falling back to the previous one.",
                        candidate, self.directory, type(error).__name__, str(error).splitlines()[0][:300],
                    )
                    failures.append((candidate, f"step {candidate}: {type(error).__name__}: "
                                                f"{str(error).splitlines()[0][:300]}"))
                    continue
                if not self.read_only:
                    for failed_step, _ in failures:
                        self._quarantine(failed_step)
                logging.info("Restored checkpoint at step %d from %s", candidate, self.directory)
                return candidate, parts
            if not failures or not self.read_only:
                break
            # A read-only reader of a live run: the run may have saved a newer checkpoint and pruned the listed
            # ones (keep_checkpoints) between the listing and the read. List again; an unchanged listing is damage.
            self._manager.reload()
            if self.all_steps() == listed:
                break
        if failures:
            raise CheckpointRestoreError(
                f"No checkpoint in {self.directory} could be read; refusing to start from scratch over them.\n  "
                + "\n  ".join(reason for _, reason in failures)
            )
        return None

    def _quarantine(self, step: int) -> None:
        """Moves a damaged step out of the manager's directory: resuming past it must not collide with it,
        and keep-N must not delete a good checkpoint in its favour."""
        logging.error("Moving the unreadable checkpoint of step %d to %s", step, self.quarantine_directory)
        if jax.process_index() == 0:
            os.makedirs(self.quarantine_directory, exist_ok=True)
            target = os.path.join(self.quarantine_directory, str(step))
            if os.path.exists(target):
                shutil.rmtree(target)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_text(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def config_differences(saved: dict | None, config: ml_collections.ConfigDict) -> list[str]:
    """`key: saved -> now` for every config key whose value differs from the saved config (except
    `distributed.*`: where the job's coordinator runs changes with every launch and says nothing about the
    run)."""
    if saved is None:
        return []
    previous, current = _flatten(saved), _flatten(json.loads(config_text(config)))
    return [f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
            for k in sorted(previous.keys() | current.keys())
            if previous.get(k) != current.get(k) and not k.startswith("distributed.")]


def write_config_json(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the run's config as `WORKDIR/config.json` (process 0 only; called after a successful restore
    or a fresh start) and returns the path. A previous config.json that differs is kept as
    `config.previous.json`, and the changed keys are logged as a warning."""
    path = os.path.join(workdir, CONFIG_NAME)
    if jax.process_index() == 0:
        changed = config_differences(read_saved_config(workdir), config)
        if changed:
            logging.warning("The config differs from the previous run in %s: %s", workdir, ", ".join(changed))
            shutil.copyfile(path, os.path.join(workdir, PREVIOUS_CONFIG_NAME))
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(config_text(config))
    return path
