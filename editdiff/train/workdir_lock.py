"""A training run owns its workdir: `WORKDIR/train.lock` names the holder (host, PID, start time).

Taken by process 0 of a training run before anything is written and released at exit. A second training run
on a locked workdir stops at once with an error naming the holder; a lock left by a process that no longer
exists on this host is taken over with a log line. Evaluation, sampling and export only read a workdir and
take no lock, so they work while a run trains.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

LOCK_NAME = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another training run holds the workdir."""


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """Context manager holding `WORKDIR/train.lock` (when `enabled`; only process 0 of a run takes it)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.enabled = enabled
        self._held = False

    def holder(self) -> dict | None:
        """The lock file's content, or None when there is no (readable) lock."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _is_stale(self, holder: dict | None) -> bool:
        if holder is None:  # an empty or half-written lock file: its writer died mid-write
            return True
        return holder.get("host") == socket.gethostname() and not _process_exists(int(holder.get("pid", -1)))

    def acquire(self) -> None:
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "start_time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if not self._is_stale(holder):
                    raise WorkdirLockedError(
                        f"{os.path.dirname(self.path)} is held by another training run (host "
                        f"{holder['host']}, PID {holder['pid']}, started {holder['start_time']}); one workdir "
                        f"trains one run. Evaluate it with --mode=eval, or train in another --workdir. If that "
                        f"run is dead on another host, remove {self.path}."
                    ) from None
                logging.warning("Taking over the stale lock %s (held by %s, which no longer runs).",
                                self.path, holder)
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return
        raise WorkdirLockedError(f"Could not take {self.path}: another process keeps re-creating it")

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
