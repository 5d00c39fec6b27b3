"""The files of `--mode=edit`: which images a `config.edit.input` names, and how the results are written."""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np
from PIL import Image

from editdiff.config_checks import ConfigError
from editdiff.methods.reports import labelled_grid, to_uint8
from input_pipeline.sources import IMAGE_EXTENSIONS, list_images

COMPARE = "compare"  # the folder of the side-by-side pictures
SUMMARY = "summary"  # the folder of the methods' per-image decisions (Method.edit_summary)


def list_inputs(path: str) -> list[tuple[str, str]]:
    """[(name, file)] for `path`: one image file (name = its file name), or every image below a folder (names =
    paths relative to it, sorted). ConfigError naming config.edit.input when there is nothing to edit."""
    if os.path.isdir(path):
        inputs = [(name, os.path.join(path, name)) for name in list_images(path)]
        if not inputs:
            raise ConfigError(f"config.edit.input = {path!r} is invalid; allowed: a folder holding images "
                             f"({', '.join(IMAGE_EXTENSIONS)}); it holds none")
        return inputs
    if not os.path.isfile(path):
        raise ConfigError(f"config.edit.input = {path!r} is invalid; allowed: an existing image file or folder")
    return [(os.path.basename(path), path)]


def write_results(output: str, name: str, results: Mapping[str, np.ndarray]) -> list[str]:
    """Writes OUTPUT/LABEL/NAME.png for each result (H, W, 3) in [-1, 1], and OUTPUT/compare/NAME.png with the
    results side by side under their labels; returns the paths written."""
    if COMPARE in results or SUMMARY in results:
        raise ValueError(f"a result may not be labelled {COMPARE!r} or {SUMMARY!r} (folders of their own)")
    stem = os.path.splitext(name)[0] + ".png"
    written = []
    for label, image in [*results.items(), (COMPARE, None)]:
        picture = (labelled_grid([(lbl, img[None]) for lbl, img in results.items()], [""]) if image is None
                   else to_uint8(image[None])[0])
        path = os.path.join(output, label, stem)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(picture).save(path)
        written.append(path)
    return written


def write_summary(output: str, name: str, summary: dict) -> str:
    """Writes OUTPUT/summary/NAME.json (a method's decisions for one input); returns its path."""
    path = os.path.join(output, SUMMARY, os.path.splitext(name)[0] + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return path
