"""REDS (Nah et al., NTIRE 2019) as a TFDS dataset: each sharp video frame with its real motion-blurred frame.

The REDS benchmark is the multitask pipeline's nine fixed evaluation sets (`input_pipeline.create_eval_sets`:
the five single tasks and the paper's four combinations) drawn from REDS validation frames: the motion-blur pair
is REDS's real blurred frame, the other effects (film grain, colour transfer, inpainting mask, sharpening) are
synthesised from stateless seeds keyed by `config.data.eval.seed`, so the sets are the same on every machine.
Training on REDS train frames uses the same pairs. Prepare once, from a local copy (nothing is downloaded):

    python -m input_pipeline.datasets.reds --manual_dir /path/to/REDS --data_dir /path/to/tfds [--frame_stride 10]

It prints the `--config.data.source.*` overrides that read the prepared dataset (see `source_overrides`).
Builder configs: `full` (every frame: 24,000 train, 3,000 validation), `stride10` (every 10th frame of each
clip: 2,400 / 300); `--frame_stride S --max_frames_per_clip M` prepare any other subset (config `strideS_maxM`).
Frames are stored as REDS's PNG bytes, unchanged; the records are array_record files (random access).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

SPLITS = {"train": "train", "validation": "val"}  # TFDS split -> REDS folder prefix
SHARP, BLURRED = "sharp", "blurred"  # the image features: source.tfds_image_key, source.tfds_blurred_key

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download REDS (https://seungjunnah.github.io/Datasets/reds.html): train_sharp, train_blur, val_sharp and
val_blur, and unzip them into one folder, the manual_dir:

    manual_dir/train_sharp/000/00000000.png ... manual_dir/train_sharp/239/00000099.png
    manual_dir/train_blur/000/00000000.png ...  (the same clip folders and frame names)
    manual_dir/val_sharp/000/00000000.png ...   manual_dir/val_sharp/029/00000099.png
    manual_dir/val_blur/000/00000000.png ...

The zips' own nesting (manual_dir/train/train_sharp/..., manual_dir/val/val_blur/...) is read as well. A frame
without its counterpart on the other side, or of another size, is skipped and logged.
"""


@dataclasses.dataclass
class RedsConfig(tfds.core.BuilderConfig):
    """Which frames of each clip: every `frame_stride`-th from the first, at most `max_frames_per_clip` (0: all)."""

    frame_stride: int = 1
    max_frames_per_clip: int = 0


def config_name(frame_stride: int, max_frames_per_clip: int) -> str:
    if frame_stride == 1 and not max_frames_per_clip:
        return "full"
    return f"stride{frame_stride}" + (f"_max{max_frames_per_clip}" if max_frames_per_clip else "")


def builder_config(frame_stride: int = 1, max_frames_per_clip: int = 0) -> RedsConfig:
    """The registered config of this subset, or a new one named `config_name(...)`; ValueError when invalid."""
    if not (isinstance(frame_stride, int) and frame_stride >= 1):
        raise ValueError(f"reds: frame_stride = {frame_stride!r} is invalid; allowed: an integer >= 1")
    if not (isinstance(max_frames_per_clip, int) and max_frames_per_clip >= 0):
        raise ValueError(f"reds: max_frames_per_clip = {max_frames_per_clip!r} is invalid; allowed: an integer "
                         ">= 0 (0: every frame)")
    name = config_name(frame_stride, max_frames_per_clip)
    for config in RedsEditing.BUILDER_CONFIGS:
        if config.name == name:
            return config
    return RedsConfig(name=name, description=f"every {frame_stride}-th frame of each clip, at most "
                                             f"{max_frames_per_clip or 'all'}", frame_stride=frame_stride,
                      max_frames_per_clip=max_frames_per_clip)


def _side_folder(manual_dir: str, prefix: str, side: str) -> str:
    """manual_dir/PREFIX_SIDE, or the zips' manual_dir/PREFIX/PREFIX_SIDE; FileNotFoundError naming the layout."""
    candidates = [os.path.join(manual_dir, f"{prefix}_{side}"), os.path.join(manual_dir, prefix, f"{prefix}_{side}")]
    for folder in candidates:
        if os.path.isdir(folder):
            return folder
    raise FileNotFoundError(f"reds: no folder {candidates[0]} (nor {candidates[1]}); expected the layout:\n"
                            + MANUAL_DOWNLOAD_INSTRUCTIONS)


def _numbered(folder: str, suffix: str = "") -> dict[int, str]:
    """{number: name} of the entries of `folder` named DIGITS + suffix (REDS's clip folders and frames)."""
    found = {}
    for name in os.listdir(folder):
        stem = name[:len(name) - len(suffix)]
        if name.endswith(suffix) and stem.isdigit():
            found[int(stem)] = name
    return found


def _size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, None when it is not a readable image."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def list_frames(manual_dir: str, prefix: str, frame_stride: int = 1, max_frames_per_clip: int = 0):
    """[(clip, frame, sharp path, blurred path)] of one REDS split (`prefix` 'train' or 'val'), by clip and frame;
    frames without a counterpart, unreadable or of two sizes are skipped and logged."""
    sharp_root, blurred_root = (_side_folder(manual_dir, prefix, side) for side in ("sharp", "blur"))
    frames, skipped = [], []
    for clip, clip_name in sorted(_numbered(sharp_root).items()):
        sharp_dir, blurred_dir = os.path.join(sharp_root, clip_name), os.path.join(blurred_root, clip_name)
        if not os.path.isdir(sharp_dir):
            continue
        sharp = _numbered(sharp_dir, ".png")
        blurred = _numbered(blurred_dir, ".png") if os.path.isdir(blurred_dir) else {}
        numbers = sorted(sharp)[::frame_stride]
        if max_frames_per_clip:
            numbers = numbers[:max_frames_per_clip]
        for frame in numbers:
            sharp_path = os.path.join(sharp_dir, sharp[frame])
            if frame not in blurred:
                skipped.append((sharp_path, "no blurred counterpart"))
                continue
            blurred_path = os.path.join(blurred_dir, blurred[frame])
            sizes = _size(sharp_path), _size(blurred_path)
            if None in sizes or sizes[0] != sizes[1]:
                skipped.append((sharp_path, f"unreadable or sizes differ (sharp, blurred) = {sizes}"))
                continue
            frames.append((clip, frame, sharp_path, blurred_path))
    if skipped:
        logging.warning("reds: %d %s frame(s) skipped, e.g. %s", len(skipped), prefix, skipped[:3])
    if not frames:
        raise ValueError(f"reds: no {prefix} frame pairs under {sharp_root} and {blurred_root}; expected the "
                         "layout:\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
    return frames


class RedsEditing(tfds.core.GeneratorBasedBuilder):
    """REDS sharp frames with their real motion-blurred frames, from a local copy (manual_dir)."""

    # TFDS 4.9.10 finds a builder's files through the importlib_resources backport, which Python >= 3.9 does not
    # install, for any builder in a package; naming the file directly skips that look-up.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sharp and blurred REDS frames, train and validation."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        RedsConfig(name="full", description="every frame (24,000 train, 3,000 validation)"),
        RedsConfig(name="stride10", description="every 10th frame of each clip (2,400 train, 300 validation)",
                   frame_stride=10),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                SHARP: tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                BLURRED: tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "clip_id": tfds.features.Scalar(dtype=np.int32, doc="REDS clip folder, e.g. 12 for 012/"),
                "frame_id": tfds.features.Scalar(dtype=np.int32, doc="frame number in the clip"),
            }),
            homepage="https://seungjunnah.github.io/Datasets/reds.html",
            citation="""@inproceedings{nah2019ntire,
  title={NTIRE 2019 Challenge on Video Deblurring and Super-Resolution: Dataset and Study},
  author={Nah, Seungjun and Baik, Sungyong and Hong, Seokil and Moon, Gyeongsik and Son, Sanghyun and
          Timofte, Radu and Lee, Kyoung Mu},
  booktitle={CVPR Workshops},
  year={2019}}""",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(list_frames(manual_dir, prefix, self.builder_config.frame_stride,
                                                           self.builder_config.max_frames_per_clip))
                for split, prefix in SPLITS.items()}

    def _generate_examples(self, frames):
        for clip, frame, sharp_path, blurred_path in frames:
            yield f"{clip:03d}/{frame:08d}", {SHARP: sharp_path, BLURRED: blurred_path, "clip_id": clip,
                                              "frame_id": frame}


def source_overrides(data_dir: str, name: str = "full") -> dict[str, str]:
    """The `config.data` keys (dotted, below `data.`) that read the prepared config `name` from `data_dir`."""
    return {"source.kind": "tfds", "source.tfds_name": f"reds_editing/{name}", "source.tfds_data_dir": data_dir,
            "source.tfds_image_key": SHARP, "source.tfds_blurred_key": BLURRED,
            "source.tfds_train_split": "train", "source.tfds_heldout_split": "validation"}


def prepare(manual_dir: str, data_dir: str, frame_stride: int = 1, max_frames_per_clip: int = 0):
    """Writes `data_dir/reds_editing/NAME/1.0.0/` (array_record) from the REDS copy in `manual_dir`."""
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"reds: manual_dir {manual_dir!r} is not a directory; expected the layout:\n"
                                + MANUAL_DOWNLOAD_INSTRUCTIONS)
    builder = RedsEditing(config=builder_config(frame_stride, max_frames_per_clip), data_dir=data_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False))
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual_dir", required=True, help="the local REDS copy (layout: see the builder's "
                                                            "MANUAL_DOWNLOAD_INSTRUCTIONS)")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--frame_stride", type=int, default=1, help="every N-th frame of each clip")
    parser.add_argument("--max_frames_per_clip", type=int, default=0, help="at most N frames per clip (0: all)")
    args = parser.parse_args(argv)
    builder = prepare(args.manual_dir, args.data_dir, args.frame_stride, args.max_frames_per_clip)
    splits = ", ".join(f"{name}: {info.num_examples}" for name, info in builder.info.splits.items())
    print(f"prepared reds_editing/{builder.builder_config.name} in {builder.data_dir} ({splits}); read it with")
    print("  " + " ".join(f"--config.data.{key}={value}" for key, value in
                          source_overrides(args.data_dir, builder.builder_config.name).items()))


if __name__ == "__main__":
    main()
