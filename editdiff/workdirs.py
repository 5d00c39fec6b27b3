"""What a training run leaves in its workdir that other runs and methods read: its config (config.json, written
at every successful start; the previous one kept beside it when a resume changes it) and its checkpoints/.
Below the trainer, so that a method can check another run it builds on (e.g. the plugin selector's plugin runs)
without importing `editdiff.train`."""
from __future__ import annotations

import json
import os

CONFIG_NAME = "config.json"
PREVIOUS_CONFIG_NAME = "config.previous.json"
CHECKPOINTS_NAME = "checkpoints"


def read_saved_config(workdir: str) -> dict | None:
    """The config.json of the workdir's last successful start, or None."""
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_run_workdir(workdir: str) -> bool:
    """Whether `workdir` holds a training run: its config.json and checkpoints/."""
    return read_saved_config(workdir) is not None and os.path.isdir(os.path.join(workdir, CHECKPOINTS_NAME))
