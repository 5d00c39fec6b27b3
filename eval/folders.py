"""Pairing prediction and target image folders by file name, and reading images without raising.

Files pair when their names agree up to the extension (`0001.png` with `0001.jpg`). Everything that cannot be
scored becomes a `Problem` in the report instead of an exception.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A file that was not scored, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Pairing:
    pairs: list[tuple[str, str, str]]  # (name, prediction path, target path), sorted by name
    problems: list[Problem]


def _images_by_name(directory: str, role: str) -> tuple[dict[str, str], list[Problem]]:
    by_name: dict[str, str] = {}
    problems = []
    for filename in sorted(os.listdir(directory)):
        path = os.path.join(directory, filename)
        name, extension = os.path.splitext(filename)
        if not os.path.isfile(path) or extension.lower() not in IMAGE_EXTENSIONS:
            continue
        if name in by_name:
            problems.append(Problem(path, f"another {role} file is also named {name!r} ({by_name[name]})"))
            continue
        by_name[name] = path
    return by_name, problems


def pair_folders(pred_dir: str, target_dir: str) -> Pairing:
    """Pairs images of `pred_dir` and `target_dir` whose names match; the rest are problems."""
    for directory in (pred_dir, target_dir):
        if not os.path.isdir(directory):
            raise NotADirectoryError(f"{directory} is not a directory")
    preds, pred_problems = _images_by_name(pred_dir, "prediction")
    targets, target_problems = _images_by_name(target_dir, "target")
    problems = pred_problems + target_problems
    problems += [Problem(preds[n], "no target with this name") for n in sorted(set(preds) - set(targets))]
    problems += [Problem(targets[n], "no prediction with this name") for n in sorted(set(targets) - set(preds))]
    pairs = [(n, preds[n], targets[n]) for n in sorted(set(preds) & set(targets))]
    return Pairing(pairs, problems)


def read_rgb(path: str) -> np.ndarray | Problem:
    """The image as float32 RGB (H, W, 3) in [0, 1] (8-bit and 16-bit files alike), or the Problem reading it."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.repeat((np.asarray(image, np.float32) / 65535.0)[..., None], 3, axis=-1)
            if image.mode in ("I", "F"):  # 32-bit pixels have no agreed white level
                return Problem(path, f"unsupported 32-bit image mode {image.mode!r}")
            return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unreadable or truncated files
        return Problem(path, f"unreadable image: {error}")
