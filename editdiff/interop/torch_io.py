"""Reading and writing PyTorch-style checkpoint directories (config.json + safetensors or .bin).

torch is imported lazily, and only for `.bin` files or bfloat16/float16 safetensors: training never needs it.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read into (or written from) one of our models."""


def read_config(directory: str | os.PathLike) -> dict:
    """Returns the parsed `config.json` of a checkpoint directory; a missing file is a CheckpointError."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: no config.json (expected a diffusers/transformers model directory)")
    with open(path) as f:
        return json.load(f)


def write_config(directory: str | os.PathLike, config: Mapping) -> None:
    """Writes `config.json` (sorted keys, indented, as save_pretrained does) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
        f.write("\n")


def _to_numpy_float32(tensor) -> np.ndarray:
    """A torch tensor of any float dtype (bfloat16 included) as a float32 numpy array; ints unchanged."""
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def read_state_dict(directory: str | os.PathLike, filenames: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """Reads the first of `filenames` present in `directory` (safetensors or torch pickle).

    Returns (state dict of numpy arrays, floats as float32; the path read). None present is a CheckpointError
    that names the directory and every file name looked for.
    """
    for name in filenames:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".safetensors"):
            try:
                from safetensors.numpy import load_file

                state = load_file(path)
            except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch.
                from safetensors.torch import load_file as load_torch

                state = {k: _to_numpy_float32(v) for k, v in load_torch(path).items()}
            return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
                    for k, v in state.items()}, path
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: _to_numpy_float32(v) for k, v in state.items()}, path
    raise CheckpointError(f"{directory}: no weights file; looked for {', '.join(filenames)}")


def write_safetensors(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Writes a state dict of numpy arrays as one safetensors file (contiguous copies, metadata format=pt)."""
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.fspath(path), metadata={"format": "pt"})
