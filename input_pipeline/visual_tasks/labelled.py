"""Labelled photos for the segmentation and depth tasks: an images folder and a maps folder.

`LabelledFolderSource(images_root, maps_root, label_kind, split, heldout_per_mille)`: every photo below
`images_root` (the extensions of input_pipeline.sources, recursive) pairs with the map below `maps_root` of
the same relative path without extension ("a/b.jpg" <-> "a/b.png"); maps are .png / .tif / .tiff (read with
Pillow, 8- or 16-bit, one channel) or .npy (a 2-D array). Split by image path as for the `folder` source.
`load(index)` returns `(photo (H, W, 3) float32 in [0, 1], map (H, W) float32)`: class ids for
label_kind='segmentation', raw depth values for label_kind='depth'.

Errors at construction (ValueError, naming the path): no maps folder given, a folder that does not exist,
a photo without a map. At load: a map that is not 2-D or differs in size from its photo raises UnreadableImage
(the photo is skipped and recorded, as for unreadable files).
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np
from PIL import Image

from input_pipeline.images import UnreadableImage, load_image
from input_pipeline.sources import Source, create_source, list_images, split_paths

MAP_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
LABEL_KINDS = ("segmentation", "depth")


def _stem(relative_path: str) -> str:
    return os.path.splitext(relative_path)[0]


def load_map(path: str) -> np.ndarray:
    """`(H, W)` float32 map from a .npy or single-channel image file; UnreadableImage otherwise."""
    try:
        if path.endswith(".npy"):
            values = np.load(path)
        else:
            with Image.open(path) as image:
                values = np.asarray(image)  # mode P keeps palette indices: the class ids of VOC-style PNGs
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"map {path}: {type(error).__name__}: {error}") from error
    if values.ndim != 2:
        raise UnreadableImage(f"map {path} has shape {values.shape}; a single-channel (H, W) map is needed")
    return values.astype(np.float32)


class LabelledFolderSource(Source):
    """Photos with per-pixel maps; see the module docstring."""

    def __init__(self, images_root: str, maps_root: str | None, label_kind: str, split: str,
                 heldout_per_mille: int):
        if label_kind not in LABEL_KINDS:
            raise ValueError(f"labelled source: label_kind={label_kind!r} is not one of {LABEL_KINDS}")
        if not maps_root:
            raise ValueError(f"labelled source for {images_root!r} has no maps folder (set the maps directory)")
        for role, root in (("images", images_root), ("maps", maps_root)):
            if not os.path.isdir(root):
                raise ValueError(f"labelled source: the {role} folder {root!r} does not exist")
        maps = {}
        for directory, _, files in os.walk(maps_root):
            for name in files:
                if name.lower().endswith(MAP_EXTENSIONS):
                    relative = os.path.relpath(os.path.join(directory, name), maps_root)
                    maps[_stem(relative)] = relative
        photos = list_images(images_root)
        missing = [p for p in photos if _stem(p) not in maps]
        if missing:
            raise ValueError(f"labelled source: no map in {maps_root!r} for {os.path.join(images_root, missing[0])}"
                             f" (expected {_stem(missing[0])}{{{','.join(MAP_EXTENSIONS)}}}); "
                             f"{len(missing)} photo(s) without a map")
        super().__init__(split_paths(photos, split, heldout_per_mille))
        self.images_root, self.maps_root, self.label_kind = images_root, maps_root, label_kind
        self._maps = maps

    def _load(self, item_id):
        photo = load_image(os.path.join(self.images_root, item_id))
        label_map = load_map(os.path.join(self.maps_root, self._maps[_stem(item_id)]))
        if label_map.shape != photo.shape[:2]:
            raise UnreadableImage(f"map {self._maps[_stem(item_id)]} is {label_map.shape}, its photo "
                                  f"{photo.shape[:2]}")
        return photo, label_map


def create_visual_source(source_config: ml_collections.ConfigDict, split: str) -> Source:
    """`create_source`, plus kind='labelled_folder' (fields `labelled_images_folder`, `labelled_maps_folder`,
    `label_kind`, `heldout_per_mille`); ValueError when the split is empty."""
    if source_config.kind != "labelled_folder":
        return create_source(source_config, split)
    source = LabelledFolderSource(source_config.labelled_images_folder,
                                  source_config.get("labelled_maps_folder"), source_config.label_kind, split,
                                  source_config.heldout_per_mille)
    if not len(source):
        raise ValueError(f"data config: source.kind='labelled_folder' has no {split} images "
                         f"(check the folder and source.heldout_per_mille)")
    return source
