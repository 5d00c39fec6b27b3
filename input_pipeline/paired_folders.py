"""Paired restoration datasets read from local folders: a degraded input photo and its clean target per item.

`config.data.source.kind = "paired_folder"` with `folder = ROOT` and `layout = NAME`. The layouts (NAME: an
image name, any of `sources.IMAGE_EXTENSIONS`; each side may have sub-folders, matched by relative path):

    layout    dataset                           input (degraded)              target (clean)
    generic   any (the default)                 ROOT/input/NAME.ext           ROOT/target/NAME.ext2 (same stem)
    gopro     GoPro deblurring (GOPRO_Large/train or /test)
                                                ROOT/SEQUENCE/blur/NAME.png   ROOT/SEQUENCE/sharp/NAME.png
    rain13k   Rain13K, Rain100H / Rain100L      ROOT/input/NAME               ROOT/target/NAME (as generic)
    snow100k  Snow100K                          ROOT/synthetic/NAME.jpg       ROOT/gt/NAME.jpg
    reside    RESIDE ITS / OTS / SOTS           ROOT/hazy/ID_A_B.png          ROOT/clear/ID.png (any extension)
    lol       LOL low-light                     ROOT/low/NAME.png             ROOT/high/NAME.png
    shiq      SHIQ highlight removal            ROOT/ID_A.png                 ROOT/ID_D.png (_S, _T ignored)
    lcdmoire  LCDMoire (AIM 2019 demoireing)    ROOT/moire/NAME.png           ROOT/clear/NAME.png

RESIDE names a hazy image after its clear image's id (the part before the first underscore: `1400_1.png`,
`0001_0.8_0.2.jpg`), so several hazy images share one target. Its indoor clear images are larger than their
hazy images (a border the hazy ones lack), so a larger clear image is centre-cropped to its hazy image's size,
as FFA-Net's RESIDE loader does; every other pair must match in size.

Files of neither side (GoPro's blur_gamma/, Snow100K's mask/, SHIQ's _S / _T) are ignored silently; a file of
one side without its counterpart is ignored, counted and logged once. A pair is held out when
`heldout_by_hash(target's path relative to ROOT, heldout_per_mille)`: keyed on the target, so the hazy
versions of one clear image stay on one side of the split.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from input_pipeline.images import UnreadableImage, load_image
from input_pipeline.sources import Source, heldout_by_hash, list_images

PairKey = Callable[[str], "str | None"]  # a path relative to ROOT -> the key it pairs on, None: not this side


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one dataset keeps its inputs and targets: a file pairs with the file of the other side that has
    the same key. `input_files` / `target_files` say it to a person (error messages)."""

    input_files: str
    target_files: str
    input_key: PairKey
    target_key: PairKey
    center_crop_target: bool = False  # a target larger than its input is centre-cropped to the input's size


def _below(folder: str, depth: int = 0, name: Callable[[str], str] = lambda stem: stem) -> PairKey:
    """Key of a file whose path part number `depth` is `folder`: its path without that part and without the
    extension, the file's stem mapped by `name` (e.g. `SEQ/blur/000047.png` -> `SEQ/000047` for depth 1)."""

    def key(path: str) -> str | None:
        parts = os.path.splitext(path)[0].split(os.sep)
        if len(parts) < depth + 2 or parts[depth] != folder:
            return None
        return "/".join(parts[:depth] + parts[depth + 1:-1] + [name(parts[-1])])

    return key


def _suffixed(suffix: str) -> PairKey:
    """Key of a file whose stem ends with `suffix`: the path without extension and suffix."""

    def key(path: str) -> str | None:
        stem = os.path.splitext(path)[0]
        return stem[:-len(suffix)] if stem.endswith(suffix) else None

    return key


def _input_target(input_folder: str, target_folder: str, depth: int = 0) -> dict:
    return dict(input_key=_below(input_folder, depth), target_key=_below(target_folder, depth))


_GENERIC = Layout("input/NAME.ext", "target/NAME.ext (same stem, any image extension)",
                  **_input_target("input", "target"))
LAYOUTS: dict[str, Layout] = {
    "generic": _GENERIC,
    "gopro": Layout("SEQUENCE/blur/NAME.png", "SEQUENCE/sharp/NAME.png", **_input_target("blur", "sharp", depth=1)),
    "rain13k": _GENERIC,
    "snow100k": Layout("synthetic/NAME.jpg", "gt/NAME.jpg", **_input_target("synthetic", "gt")),
    "reside": Layout("hazy/ID_A_B.png", "clear/ID.png (any image extension)",
                     input_key=_below("hazy", name=lambda stem: stem.split("_")[0]), target_key=_below("clear"),
                     center_crop_target=True),
    "lol": Layout("low/NAME.png", "high/NAME.png", **_input_target("low", "high")),
    "shiq": Layout("ID_A.png", "ID_D.png", input_key=_suffixed("_A"), target_key=_suffixed("_D")),
    "lcdmoire": Layout("moire/NAME.png", "clear/NAME.png", **_input_target("moire", "clear")),
}


def list_pairs(root: str, layout: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(pairs, unpaired) of the dataset under `root`: pairs = [(input path, target path)] relative to root,
    sorted by input; unpaired = the files of either side without a counterpart. Of two targets with the same
    key (e.g. `a.png` and `a.jpg`) the first in sorted order is used. ValueError when there is no pair."""
    spec = LAYOUTS[layout]
    files = list_images(root)
    targets: dict[str, str] = {}
    for path in files:
        key = spec.target_key(path)
        if key is not None:
            targets.setdefault(key, path)
    pairs, unpaired, used, inputs = [], [], set(), 0
    for path in files:
        key = spec.input_key(path)
        if key is None:
            continue
        inputs += 1
        if key in targets:
            pairs.append((path, targets[key]))
            used.add(targets[key])
        else:
            unpaired.append(path)
    unpaired += [path for path in targets.values() if path not in used]
    if not pairs:
        raise ValueError(f"paired folder {root!r} (layout {layout!r}) has no pairs: expected input files "
                         f"ROOT/{spec.input_files} with target files ROOT/{spec.target_files}; found "
                         f"{len(files)} image file(s), {inputs} of them inputs and {len(targets)} targets of "
                         "this layout")
    if unpaired:
        logging.warning("input_pipeline: %d file(s) under %s without a counterpart in layout %r ignored, e.g. %s",
                        len(unpaired), root, layout, sorted(unpaired)[:3])
    return pairs, sorted(unpaired)


class PairedFolderSource(Source):
    """The pairs of one split; item ids are the input paths relative to `root` (unique: a target may have
    several inputs). `unpaired` lists the files left out for want of a counterpart."""

    def __init__(self, root: str, layout: str, split: str, heldout_per_mille: int):
        pairs, self.unpaired = list_pairs(root, layout)
        want_heldout = split == "heldout"
        kept = [(i, t) for i, t in pairs if heldout_by_hash(t, heldout_per_mille) == want_heldout]
        super().__init__([input_path for input_path, _ in kept])
        self.root, self.layout = root, LAYOUTS[layout]
        self.targets = dict(kept)

    def _read(self, path: str) -> np.ndarray:
        try:
            return load_image(os.path.join(self.root, path))
        except UnreadableImage as error:  # name the file: an item has two
            raise UnreadableImage(f"{path}: {error}") from error

    def _load(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(target, input), each `(H, W, 3)` float32 in [0, 1] and of the same size."""
        target_path = self.targets[item_id]
        target, degraded = self._read(target_path), self._read(item_id)
        (height, width), (target_height, target_width) = degraded.shape[:2], target.shape[:2]
        if self.layout.center_crop_target and target_height >= height and target_width >= width:
            top, left = (target_height - height) // 2, (target_width - width) // 2
            target = target[top:top + height, left:left + width]
        if target.shape != degraded.shape:
            raise UnreadableImage(f"input {item_id} ({height}x{width}) and target {target_path} "
                                  f"({target_height}x{target_width}) differ in size; a pair must be aligned "
                                  "pixel for pixel")
        return target, degraded
