"""Where the photos come from: random-access sources with a fixed train / held-out split.

A source lists item ids per split and loads one item as `(photo, real_blurred_or_None)`, float32 `(H, W, 3)`
in [0, 1]. Random access by index is what makes the batch at step k a pure function of (seed, k).

- bundled: colour photographs shipped inside scikit-image (no downloads). Fixed split by image:
  train = astronaut, hubble_deep_field, immunohistochemistry, retina, rocket, motorcycle_left,
  motorcycle_right; held out = chelsea, coffee (the two motorcycle views are near-duplicates, so they stay
  on one side).
- folder: every .jpg / .jpeg / .png / .webp below a root (recursive). A file is held out when
  sha1(relative path) % 1000 < heldout_per_mille: adding files never moves an existing one across splits.
- paired: the same relative names under a sharp folder and a blurred folder (e.g. REDS sharp / blur frames);
  the real blurred frame replaces the synthetic motion blur. Split as for folder.
- tfds: a prepared TFDS dataset read from `data_dir` with random access (array_record format), named splits.
  With `tfds_blurred_key` each record's real blurred frame replaces the synthetic motion blur, as for paired
  (the REDS benchmark, input_pipeline/datasets/reds.py).

Sources whose items come with a real blurred frame are `PairedSource`s: the pipeline tells them apart by that.
"""
from __future__ import annotations

import hashlib
import os

import ml_collections
import numpy as np

from input_pipeline.images import SkipLog, UnreadableImage, decode_image, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
BUNDLED_TRAIN = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "rocket.jpg",
                 "motorcycle_left.png", "motorcycle_right.png")
BUNDLED_HELDOUT = ("chelsea.png", "coffee.png")
SPLITS = ("train", "heldout")


class Source:
    """Random-access photos of one split. Subclasses fill `ids` and implement `_load`."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, item_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Item `index`; raises UnreadableImage (and records it in `skipped`) when it cannot be used."""
        item_id = self.ids[index]
        if item_id in self.skipped:
            raise UnreadableImage(f"{item_id}: skipped before")
        try:
            return self._load(item_id)
        except UnreadableImage as error:
            self.skipped.add(item_id, str(error))
            raise


def heldout_by_hash(relative_path: str, heldout_per_mille: int) -> bool:
    """The folder split rule: stable per file, independent of every other file."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < heldout_per_mille


def list_images(root: str) -> list[str]:
    """Relative paths of the image files below `root`, sorted."""
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def split_paths(paths: list[str], split: str, heldout_per_mille: int) -> list[str]:
    want_heldout = split == "heldout"
    return [p for p in paths if heldout_by_hash(p, heldout_per_mille) == want_heldout]


class FolderSource(Source):
    def __init__(self, root: str, split: str, heldout_per_mille: int):
        super().__init__(split_paths(list_images(root), split, heldout_per_mille))
        self.root = root

    def _load(self, item_id):
        return load_image(os.path.join(self.root, item_id)), None


class BundledSource(Source):
    """The scikit-image photos, decoded once and kept in memory (a few MB)."""

    def __init__(self, split: str):
        import skimage.data

        super().__init__(list(BUNDLED_TRAIN if split == "train" else BUNDLED_HELDOUT))
        self.root = os.path.dirname(skimage.data.__file__)
        self._cache: dict[str, np.ndarray] = {}

    def _load(self, item_id):
        if item_id not in self._cache:
            self._cache[item_id] = load_image(os.path.join(self.root, item_id))
        return self._cache[item_id], None


class PairedSource(Source):
    """A source whose items come with a real blurred frame: `_load` returns (sharp, blurred) of one shape, and
    the pipeline uses the blurred frame in place of the synthetic motion blur."""

    @staticmethod
    def _pair(sharp: np.ndarray, blurred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if sharp.shape != blurred.shape:
            raise UnreadableImage(f"sharp {sharp.shape} and blurred {blurred.shape} frames differ in shape")
        return sharp, blurred


class SharpBlurredFolderSource(PairedSource):
    """Sharp / blurred frames with the same relative name; files missing on either side are skipped."""

    def __init__(self, sharp_root: str, blurred_root: str, split: str, heldout_per_mille: int):
        sharp = list_images(sharp_root)
        blurred = set(list_images(blurred_root))
        super().__init__(split_paths([p for p in sharp if p in blurred], split, heldout_per_mille))
        for path in sharp:
            if path not in blurred:
                self.skipped.add(os.path.join(sharp_root, path), "no blurred counterpart")
        self.sharp_root, self.blurred_root = sharp_root, blurred_root

    def _load(self, item_id):
        return self._pair(load_image(os.path.join(self.sharp_root, item_id)),
                          load_image(os.path.join(self.blurred_root, item_id)))


def _tfds_records(name: str, data_dir: str, split_name: str, image_keys: dict[str, str]):
    """Random access to the records of a prepared split; `image_keys` ({config key: feature}) stay encoded."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    features = builder.info.features
    for config_key, feature in image_keys.items():
        if feature not in features:
            raise ValueError(f"data config: source.{config_key}={feature!r} is not a feature of {name!r}; "
                             f"its features: {sorted(features)}")
    try:
        return builder.as_data_source(split=split_name, decoders={
            feature: tfds.decode.SkipDecoding() for feature in image_keys.values()})
    except NotImplementedError as error:
        raise ValueError(f"data config: source.tfds_name={name!r} is stored in a format without random access "
                         f"({error}); prepare it with file_format='array_record'") from error


class TfdsSource(Source):
    """A prepared TFDS split with random access; the image feature is decoded like any file."""

    def __init__(self, name: str, data_dir: str, split_name: str, image_key: str):
        self._records = _tfds_records(name, data_dir, split_name, {"tfds_image_key": image_key})
        super().__init__([str(i) for i in range(len(self._records))])
        self.image_key = image_key

    def _load(self, item_id):
        encoded = self._records[int(item_id)][self.image_key]
        return decode_image(encoded), None


class PairedTfdsSource(PairedSource):
    """A prepared TFDS split whose records hold a sharp frame (`image_key`) and its real blurred frame
    (`blurred_key`), e.g. REDS prepared by input_pipeline/datasets/reds.py."""

    def __init__(self, name: str, data_dir: str, split_name: str, image_key: str, blurred_key: str):
        self._records = _tfds_records(name, data_dir, split_name,
                                      {"tfds_image_key": image_key, "tfds_blurred_key": blurred_key})
        super().__init__([str(i) for i in range(len(self._records))])
        self.image_key, self.blurred_key = image_key, blurred_key

    def _load(self, item_id):
        record = self._records[int(item_id)]
        return self._pair(decode_image(record[self.image_key]), decode_image(record[self.blurred_key]))


def create_source(source_config: ml_collections.ConfigDict, split: str) -> Source:
    """The source of `split` ('train' or 'heldout') named by the config; ValueError when it is empty."""
    kind = source_config.kind
    if kind == "bundled":
        source = BundledSource(split)
    elif kind == "folder":
        source = FolderSource(source_config.folder, split, source_config.heldout_per_mille)
    elif kind == "paired":
        source = SharpBlurredFolderSource(source_config.paired_source_folder, source_config.paired_target_folder,
                                          split, source_config.heldout_per_mille)
    else:
        split_name = source_config.tfds_train_split if split == "train" else source_config.tfds_heldout_split
        tfds_args = (source_config.tfds_name, source_config.tfds_data_dir, split_name, source_config.tfds_image_key)
        if source_config.tfds_blurred_key:
            source = PairedTfdsSource(*tfds_args, source_config.tfds_blurred_key)
        else:
            source = TfdsSource(*tfds_args)
    if not len(source):
        raise ValueError(f"data config: source.kind={kind!r} has no {split} images "
                         f"(check the folder / dataset and source.heldout_per_mille)")
    return source
