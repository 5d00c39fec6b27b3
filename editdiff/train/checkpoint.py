"""Orbax checkpoints of the train state under `WORKDIR/checkpoints`, with the run's config beside them.

Saves are asynchronous (training goes on while the previous state is written), keep the newest N, and happen
every `checkpoint_every` steps plus on demand (final step, preemption). Restoring tries the newest checkpoint
first; one that cannot be read is reported loudly and the previous one is tried; once one restores, the
unreadable newer ones move to `WORKDIR/corrupt_checkpoints/`. If checkpoints exist but none restores, a
CheckpointRestoreError is raised: a run never silently starts again from scratch.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as save_policies
from jax.experimental import multihost_utils


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist in the workdir but none of them can be restored."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_config_json(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the run's config as `WORKDIR/config.json` (process 0 only) and returns the path. When a
    previous run in the workdir used a different config, the changed keys are logged as a warning."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
        if os.path.isfile(path):
            with open(path) as f:
                previous, current = _flatten(json.load(f)), _flatten(json.loads(text))
            changed = sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))
            if changed:
                logging.warning(
                    "The config differs from the previous run in %s: %s",
                    workdir, ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed),
                )
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return path


class Checkpointer:
    """The run's Orbax CheckpointManager plus restore-with-fallback."""

    def __init__(self, workdir: str, *, keep: int, every: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.quarantine_directory = os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
                # Orbax's default also saves the first step of every run; only the interval and preemption
                # should cost a (possibly multi-GB) write.
                save_decision_policy=save_policies.AnySavePolicy(
                    [save_policies.FixedIntervalPolicy(every), save_policies.PreemptionCheckpointingPolicy()]
                ),
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Starts saving `state` as `step` if the interval (or `force`) asks and it is not saved yet; returns
        whether a save started. The write finishes in the background."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def reached_preemption(self, step: int) -> bool:
        """Whether the multi-host preemption service (jax.distributed) asked every process to stop."""
        return self._manager.reached_preemption(step)

    def restore_latest(self, abstract_state: Any) -> Any | None:
        """The newest readable checkpoint restored into the structure, dtypes and shardings of
        `abstract_state` (a pytree of jax.ShapeDtypeStruct with sharding), or None when there is none.

        Each unreadable checkpoint is logged as an error and the previous one tried. Newer unreadable ones
        are quarantined once an older one restores (the same structure reads, so they are damaged). If none
        restores, nothing is moved and CheckpointRestoreError lists why each failed (often a changed model or
        optimiser config rather than damage).
        """
        failures = []
        for step in reversed(self.all_steps()):
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as error:  # noqa: BLE001 -- any failure to read means: try the previous one
                logging.error(
                    "CHECKPOINT AT STEP %d IN %s CANNOT BE RESTORED (%s: %s); falling back to the previous one.",
                    step, self.directory, type(error).__name__, error,
                )
                failures.append((step, f"step {step}: {type(error).__name__}: {error}"))
                continue
            for failed_step, _ in failures:
                self._quarantine(failed_step)
            logging.info("Restored checkpoint at step %d from %s", step, self.directory)
            return state
        if failures:
            raise CheckpointRestoreError(
                f"No checkpoint in {self.directory} could be restored; refusing to start from scratch over them. "
                "If the model or optimiser config changed since they were written, compare with config.json "
                "in the workdir.\n  " + "\n  ".join(reason for _, reason in failures)
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

