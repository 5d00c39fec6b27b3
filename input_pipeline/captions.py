"""Plain image batches, optionally captioned or paired: the data of latent diffusion training (`configs/ldm.py`)
and of restoration training on synthesised degradations (Diff-Plugin's tasks).

Sources (`config.data.source.kind`), each with the fixed train / held-out split of `input_pipeline.sources`:

- bundled: the scikit-image photos; captioned, each has the one-line caption in `BUNDLED_CAPTIONS`.
- folder: every image below a root (recursive). Captioned, an image's caption is the `text` of its line in a
  `metadata.jsonl` of its folder or a folder above (`{"file_name": path relative to that folder, "text": ...}`,
  the Hugging Face ImageFolder convention diffusers' text-to-image scripts read), else the first line of a
  sidecar `NAME.txt` beside `NAME.jpg`; an image without a caption is skipped (and logged) before the split.
- paired_folder: a restoration dataset of (degraded input, clean target) photos in one of the folder layouts of
  `input_pipeline.paired_folders` (`config.data.source.layout`); never captioned. Both photos of a pair get
  the same resize, crop and flip, so `source` is the real input aligned pixel for pixel with `image`.

Example i of a run (i = step * batch_size + position in the global batch) is a pure function of (seed, i): its
photo is position i % n of a stateless permutation of epoch i // n (every photo once per epoch), its crop and
flip come from stateless ops keyed by (seed, i). Host p of P takes positions [p B/P, (p + 1) B/P) of each global
batch. Batch fields:

    image       (B, crop, crop, 3) float32 in [-1, 1]
    input_ids   (B, L) int32, the caption's token ids (captioned runs only; `tokenize` gives L)
    source      (B, crop, crop, 3) float32 in [-1, 1], `image` degraded (paired runs only): the real input of a
                paired_folder source, else `image` degraded by `degrade`
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from editdiff import config_checks as checks
from input_pipeline.host_batches import HostBatches
from input_pipeline.images import UnreadableImage, fit_to_crop, resize_short_side
from input_pipeline.paired_folders import LAYOUTS, PairedFolderSource
from input_pipeline.randomness import example_seed, purpose_seed
from input_pipeline.sources import BundledSource, FolderSource, Source, list_images, split_paths

SOURCE_KINDS = ("bundled", "folder", "paired_folder")
SMALL_IMAGE_POLICIES = ("upscale", "pad", "skip")
METADATA_FILE = "metadata.jsonl"
_PERMUTATION_SALT = 0x1D11  # not the multitask pipeline's: the two pipelines draw unrelated orders

# One short caption per bundled photo (what a person sees in it), for text-conditioned runs without data.
BUNDLED_CAPTIONS = {
    "astronaut.png": "a portrait of an astronaut in a white spacesuit in front of a flag",
    "hubble_deep_field.jpg": "a deep field of distant galaxies in black space",
    "ihc.png": "a microscope image of stained tissue in brown and blue",
    "retina.jpg": "a photo of the retina of a human eye, red with dark vessels",
    "rocket.jpg": "a rocket on a launch pad under a blue sky",
    "motorcycle_left.png": "a red motorcycle in a room, seen from the left",
    "motorcycle_right.png": "a red motorcycle in a room, seen from the right",
    "chelsea.png": "a photo of a tabby cat looking to the side",
    "coffee.png": "a cup of coffee on a saucer on a wooden table",
}

Tokenize = Callable[[Sequence[str]], np.ndarray]  # captions -> (N, L) int32 token ids
# (clean (H, W, 3) float32 in [0, 1], a (2,) seed) -> the degraded image, same shape and range; pure in both
# (input_pipeline.degradations), so a paired example is rebuilt exactly from its index. ImageBatches also takes
# one returning {"source": the degraded image, FIELD: tensor, ...}.
Degrade = Callable[[tf.Tensor, tf.Tensor], tf.Tensor | dict[str, tf.Tensor]]


def paired_folder_source_config() -> ml_collections.ConfigDict:
    """`config.data.source` of a paired restoration dataset: set `folder` to its root and `layout` to one of
    `input_pipeline.paired_folders.LAYOUTS`."""
    return ml_collections.ConfigDict(dict(kind="paired_folder", folder="", layout="generic", heldout_per_mille=100))


def default_image_data_config() -> ml_collections.ConfigDict:
    """`config.data` of an image-only (or captioned) run: the bundled photos, 64 px crops of 96 px photos."""
    cfg = ml_collections.ConfigDict()
    cfg.source = paired_folder_source_config()
    cfg.source.kind = "bundled"  # one of SOURCE_KINDS; `layout` is read by paired_folder only
    cfg.crop_size = 64
    cfg.resize_short_side = 96  # >0: resize every photo so its short side has this length, then crop
    cfg.small_image_policy = "upscale"
    cfg.random_flip = True
    cfg.batch_size = 8  # global batch; each host gets batch_size // process_count
    cfg.seed = 0
    cfg.num_parallel_calls = -1  # -1: tf.data AUTOTUNE; the order stays deterministic either way
    cfg.prefetch_batches = 2
    return cfg


def _folder_rules(config) -> list[str]:
    source, problems = config.data.source, []
    if source.kind in ("folder", "paired_folder") and not os.path.isdir(source.folder):
        problems.append(f"config.data.source.folder = {source.folder!r} is invalid; allowed: an existing "
                        f"directory of images when config.data.source.kind = {source.kind!r}")
    resize, crop = config.data.resize_short_side, config.data.crop_size
    if 0 < resize < crop:
        problems.append(f"config.data.resize_short_side = {resize} is invalid; allowed: 0 (off) or at least "
                        f"config.data.crop_size = {crop}")
    return problems


def image_data_sections() -> list[checks.Section]:
    """The `config.data` keys of `default_image_data_config` as validation sections."""
    return [
        checks.Section("data", {
            "crop_size": checks.int_at_least(8),
            "resize_short_side": checks.int_at_least(0),
            "small_image_policy": checks.one_of(SMALL_IMAGE_POLICIES),
            "random_flip": checks.BOOLEAN,
            "batch_size": checks.int_at_least(1),
            "seed": checks.int_at_least(0),
            "num_parallel_calls": ((lambda v: checks.is_int(v) and (v == -1 or v >= 1)),
                                   "an integer >= 1, or -1 for tf.data AUTOTUNE"),
            "prefetch_batches": checks.int_at_least(0),
            "source": checks.ANY,
        }),
        checks.Section("data.source", {
            "kind": checks.one_of(SOURCE_KINDS),
            "folder": checks.string(),
            "layout": checks.one_of(tuple(LAYOUTS)),
            "heldout_per_mille": ((lambda v: checks.is_int(v) and 0 <= v < 1000), "an integer in [0, 1000)"),
        }, rules=(_folder_rules,)),
    ]


# ---------------------------------------------------------------------------------------------------------
# Sources with captions.


def read_folder_captions(root: str) -> dict[str, str]:
    """{image path relative to root: caption} from every metadata.jsonl below root and sidecar .txt files;
    a metadata line wins over a sidecar file, a metadata file nearer the image over one above it."""
    captions: dict[str, str] = {}
    for directory, _, files in sorted(os.walk(root), key=lambda entry: entry[0].count(os.sep)):
        if METADATA_FILE not in files:
            continue
        with open(os.path.join(directory, METADATA_FILE), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    name, text = entry["file_name"], entry["text"]
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{os.path.join(directory, METADATA_FILE)}:{number}: expected a JSON object "
                                     f"with 'file_name' and 'text' ({error})") from None
                captions[os.path.normpath(os.path.relpath(os.path.join(directory, name), root))] = str(text)
    for path in list_images(root):
        sidecar = os.path.join(root, os.path.splitext(path)[0] + ".txt")
        if path not in captions and os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                captions[path] = f.readline().strip()
    return captions


class CaptionFolderSource(FolderSource):
    """FolderSource of the captioned images only; `captions[i]` belongs to `ids[i]`."""

    def __init__(self, root: str, split: str, heldout_per_mille: int):
        captions = read_folder_captions(root)
        paths = list_images(root)
        uncaptioned = [p for p in paths if p not in captions]
        Source.__init__(self, split_paths([p for p in paths if p in captions], split, heldout_per_mille))
        self.root = root
        for path in uncaptioned:
            self.skipped.add(os.path.join(root, path), f"no caption ({METADATA_FILE} line or sidecar .txt)")
        self.captions = [captions[p] for p in self.ids]


def create_image_source(source_config: ml_collections.ConfigDict, split: str, *, captioned: bool) -> Source:
    """The source of `split` ('train' or 'heldout'); captioned sources carry `captions` aligned with `ids`."""
    if source_config.kind == "paired_folder":
        if captioned:
            raise ValueError("config.data.source.kind = 'paired_folder' has no captions; a captioned run needs "
                             "kind 'bundled' or 'folder'")
        source = PairedFolderSource(source_config.folder, source_config.layout, split,
                                    source_config.heldout_per_mille)
    elif source_config.kind == "bundled":
        source = BundledSource(split)
        if captioned:
            source.captions = [BUNDLED_CAPTIONS[item] for item in source.ids]
    elif captioned:
        source = CaptionFolderSource(source_config.folder, split, source_config.heldout_per_mille)
    else:
        source = FolderSource(source_config.folder, split, source_config.heldout_per_mille)
    if not len(source):
        raise ValueError(f"data config: source.kind={source_config.kind!r} has no {split} images"
                         + (" with captions" if captioned else "") + " (check the folder and "
                         "config.data.source.heldout_per_mille)")
    return source


# ---------------------------------------------------------------------------------------------------------
# Crops.


class _CropLoader:
    """Python side of the pipeline: photo index + crop position -> (crop in [0, 1], index of the photo used).
    An unusable photo is replaced by the next usable one of the split (its caption follows it).

    The crop has `channels` channels: 3, or 6 for a paired_folder source, the target's then the input's. One
    array for both photos of a pair makes the same crop (and later the same flip) hold for both by construction.
    """

    def __init__(self, source: Source, cfg: ml_collections.ConfigDict):
        self.source = source
        self.paired = isinstance(source, PairedFolderSource)
        self.channels = 6 if self.paired else 3
        self.crop_size = cfg.crop_size
        self.policy = cfg.small_image_policy
        self.short_side = cfg.resize_short_side
        # Resized photos are small; keeping recent ones saves the resize on every crop of a small dataset.
        self._prepared = functools.lru_cache(maxsize=256)(self._prepare)

    def _prepare(self, index: int) -> np.ndarray:
        photo, real_input = self.source.load(index)
        photos = [photo, real_input] if self.paired else [photo]
        if self.short_side:  # a pair has one size, so both photos get the same resize
            photos = [resize_short_side(p, self.short_side) for p in photos]
        fitted = [fit_to_crop(p, self.crop_size, self.policy) for p in photos]
        if fitted[0] is None:
            self.source.skipped.add(self.source.ids[index], f"smaller than crop_size={self.crop_size}: "
                                                            f"{photos[0].shape[:2]}")
            raise UnreadableImage("too small")
        return np.concatenate(fitted, axis=-1)

    def usable(self, index: int) -> tuple[np.ndarray, int]:
        n = len(self.source)
        for attempt in range(n):
            try:
                return self._prepared((index + attempt) % n), (index + attempt) % n
            except UnreadableImage:
                continue
        raise RuntimeError(f"no usable image among the {n} of this split; skipped: {self.source.skipped.as_dict()}")

    def crop(self, index, fraction) -> tuple[np.ndarray, np.int64]:
        photo, used = self.usable(int(index))
        c = self.crop_size
        height, width = photo.shape[:2]
        top = min(int(fraction[0] * (height - c + 1)), height - c)
        left = min(int(fraction[1] * (width - c + 1)), width - c)
        return np.ascontiguousarray(photo[top:top + c, left:left + c], np.float32), np.int64(used)


def _epoch_photo(seed: int, index: tf.Tensor, n: int) -> tf.Tensor:
    """Example `index`'s photo: position index % n of epoch index // n's stateless permutation."""
    epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, _PERMUTATION_SALT], tf.int64),
                                                          index // n)
    return tf.random.experimental.index_shuffle(index % n, epoch_seed, tf.constant(n - 1, tf.int64))


def caption_table(source: Source, tokenize: Tokenize) -> np.ndarray:
    """(n, L) int32 token ids of the source's captions, tokenized once."""
    return np.asarray(tokenize(list(source.captions)), np.int32)


class ImageBatches(HostBatches):
    """Per-host training batches as dicts of numpy arrays (module docstring); `step` is the next batch's.

    `tokenize` (captions -> (N, L) int32 ids) makes the run captioned. A paired_folder source or `degrade` makes
    it paired: each example also carries `source` in [-1, 1], the input of a restoration model whose target is
    `image` — the real input photo of a paired_folder source (cropped and flipped with its target; `degrade` is
    not called), else the (flipped) crop degraded with the example's "degradation" seed. `degrade` may return a
    dict instead of the image: its "source" is the degraded image, its other entries become batch fields as they
    are (a multi-task degradation's drawn task, say). `num_skipped` /
    `skipped_files` report unusable files met so far.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, tokenize: Tokenize | None = None,
                 degrade: Degrade | None = None, start_step: int = 0, process_index: int = 0, process_count: int = 1):
        source = create_image_source(cfg.source, "train", captioned=tokenize is not None)
        loader = _CropLoader(source, cfg)
        table = None if tokenize is None else tf.constant(caption_table(source, tokenize))
        crop, n, seed = cfg.crop_size, len(source), cfg.seed

        def example(index):
            key = example_seed(seed, index)
            fraction = tf.random.stateless_uniform([2], purpose_seed(key, "crop"))
            pixels, used = tf.numpy_function(loader.crop, [_epoch_photo(seed, index, n), fraction],
                                             [tf.float32, tf.int64], stateful=False)
            pixels.set_shape([crop, crop, loader.channels])
            if cfg.random_flip:
                flip = tf.random.stateless_uniform([], purpose_seed(key, "flip")) < 0.5
                pixels = tf.where(flip, tf.reverse(pixels, [1]), pixels)
            image = pixels[..., :3]
            fields = {"image": image * 2.0 - 1.0}
            if loader.paired:
                fields["source"] = pixels[..., 3:] * 2.0 - 1.0
            elif degrade is not None:
                degraded = degrade(image, purpose_seed(key, "degradation"))
                if isinstance(degraded, dict):  # a degradation with fields of its own (e.g. which task it drew)
                    fields |= {name: value for name, value in degraded.items() if name != "source"}
                    degraded = degraded["source"]
                fields["source"] = degraded * 2.0 - 1.0
            if table is not None:
                fields["input_ids"] = tf.gather(table, used)
            return fields

        super().__init__(source, example, batch_size=cfg.batch_size, start_step=start_step,
                         process_index=process_index, process_count=process_count,
                         num_parallel_calls=cfg.num_parallel_calls, prefetch_batches=cfg.prefetch_batches)


def fixed_examples(cfg: ml_collections.ConfigDict, split: str, count: int, seed: int, *,
                   captioned: bool = False, degrade: Degrade | None = None) -> dict:
    """`count` fixed examples of `split` for evaluation: example i is photo i % n of the split (every photo as
    evenly as count allows), cropped at a position drawn from (seed, i), not flipped.

    Returns {"image": (count, crop, crop, 3) float32 in [-1, 1]} plus "caption": [count strings] if captioned
    and "source": (count, crop, crop, 3) in [-1, 1] for a paired_folder source (the real input, cropped with its
    target; `degrade` is not called) or when `degrade` is given (each crop degraded with the "degradation" seed
    of example_seed(seed, i)).
    """
    source = create_image_source(cfg.source, split, captioned=captioned)
    loader = _CropLoader(source, cfg)
    crops, captions = [], []
    for i in range(count):
        fraction = np.random.default_rng([seed, i, 0x1D11]).uniform(size=2)
        crop, used = loader.crop(i % len(source), fraction)
        crops.append(crop * 2.0 - 1.0)
        if captioned:
            captions.append(source.captions[int(used)])
    if len(source.skipped):
        logging.warning("fixed_examples(%s): skipped %s", split, source.skipped.as_dict())
    pixels = np.stack(crops)
    examples = {"image": pixels[..., :3], **({"caption": captions} if captioned else {})}
    if loader.paired:
        examples["source"] = pixels[..., 3:]
    elif degrade is not None:
        examples["source"] = np.stack([
            np.asarray(degrade(tf.constant((image + 1.0) / 2.0), purpose_seed(example_seed(seed, i), "degradation")))
            * 2.0 - 1.0 for i, image in enumerate(examples["image"])]).astype(np.float32)
    return examples
