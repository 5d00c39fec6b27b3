"""The REDS benchmark (input_pipeline/datasets/reds.py): a TFDS dataset prepared from a tiny fake REDS tree, read
by the tfds source with its real blurred frames as the motion-blur pairs, in training batches and the fixed
evaluation sets.

Every frame is random noise, so a crop is found in exactly one frame at one place; the "blurred" frames are a
horizontal box blur of their sharp frames.
"""
import contextlib
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import input_pipeline
from input_pipeline.config import default_data_config, validate_data_config
from input_pipeline.datasets import reds
from input_pipeline.sources import PairedTfdsSource, create_source

HEIGHT, WIDTH, CROP = 32, 48, 16
CLIPS = {"train": {0: 3, 1: 3}, "val": {0: 2}}  # REDS folder prefix -> {clip: frames}


def _blur(image):
    padded = np.pad(image.astype(np.float32), [(0, 0), (2, 2), (0, 0)], mode="edge")
    return np.round(sum(padded[:, k:k + WIDTH] for k in range(5)) / 5).astype(np.uint8)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(manual_dir, data_dir, {(prefix, clip, frame): (sharp, blurred)}, what the command printed)."""
    root, data_dir = tmp_path_factory.mktemp("REDS"), tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    frames = {}
    for prefix, clips in CLIPS.items():
        base = root / prefix if prefix == "val" else root  # val as the zips nest it: val/val_sharp/...
        for clip, count in clips.items():
            for frame in range(count):
                sharp = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                frames[prefix, clip, frame] = sharp, _blur(sharp)
                for side, image in (("sharp", sharp), ("blur", frames[prefix, clip, frame][1])):
                    _save(base / f"{prefix}_{side}" / f"{clip:03d}" / f"{frame:08d}.png", image)
    _save(root / "train_sharp" / "001" / "00000003.png", rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    (root / "train_sharp" / "001" / "notes.txt").write_text("not a frame")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reds.main(["--manual_dir", str(root), "--data_dir", str(data_dir)])
    return root, data_dir, frames, printed.getvalue()


def _records(data_dir, name, split):
    return tfds.builder(f"reds_editing/{name}", data_dir=str(data_dir)).as_data_source(split=split)


def test_prepare_writes_both_splits_of_sharp_and_real_blurred_frames(prepared):
    _, data_dir, frames, printed = prepared
    builder = tfds.builder("reds_editing/full", data_dir=str(data_dir))
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 6, "validation": 2}
    assert set(builder.info.features) == {"sharp", "blurred", "clip_id", "frame_id"}
    for split, prefix in reds.SPLITS.items():
        records = _records(data_dir, "full", split)
        seen = set()
        for record in records:
            key = prefix, int(record["clip_id"]), int(record["frame_id"])
            seen.add(key)
            np.testing.assert_array_equal(record["sharp"], frames[key][0])
            np.testing.assert_array_equal(record["blurred"], frames[key][1])
        assert seen == {key for key in frames if key[0] == prefix}  # the unpaired 001/00000003 is left out
    overrides = " ".join(f"--config.data.{k}={v}" for k, v in reds.source_overrides(str(data_dir)).items())
    assert overrides in printed and "--config.data.source.tfds_blurred_key=blurred" in overrides


def test_frame_stride_and_max_frames_prepare_a_subset(prepared):
    root, data_dir, _, _ = prepared
    assert reds.builder_config(10) is reds.RedsEditing.BUILDER_CONFIGS[1]  # the registered 'stride10'
    reds.prepare(str(root), str(data_dir), frame_stride=2, max_frames_per_clip=1)
    train, validation = (_records(data_dir, "stride2_max1", split) for split in ("train", "validation"))
    assert sorted((int(r["clip_id"]), int(r["frame_id"])) for r in train) == [(0, 0), (1, 0)]
    assert len(validation) == 1
    with pytest.raises(ValueError, match=r"frame_stride = 0 is invalid; allowed: an integer >= 1"):
        reds.builder_config(0)


def test_a_missing_layout_names_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manual_dir .* is not a directory; expected the layout"):
        reds.prepare(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
    (tmp_path / "train_sharp").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no folder .*train_blur .*\n.*Download REDS"):
        reds.list_frames(str(tmp_path), "train")


def _config(data_dir, **overrides):
    cfg = default_data_config()
    cfg.update_from_flattened_dict({**reds.source_overrides(str(data_dir)), **overrides})
    validate_data_config(cfg)
    return cfg


def _signed(image):
    return image.astype(np.float32) / 127.5 - 1.0


def _locate(crop, frames):
    """The (key, top, left, flipped) of the one place where `crop` (c, c, 3) in [-1, 1] is a sharp frame's crop."""
    found = []
    for key, (sharp, _) in frames.items():
        windows = np.lib.stride_tricks.sliding_window_view(_signed(sharp), (CROP, CROP, 3))[:, :, 0]
        for flipped in (False, True):
            matches = np.all(np.abs(windows - (crop[:, ::-1] if flipped else crop)) < 1e-5, axis=(2, 3, 4))
            found += [(key, top, left, flipped) for top, left in zip(*np.nonzero(matches))]
    assert len(found) == 1, found
    return found[0]


def _blurred_window(frames, key, top, left, flipped):
    window = _signed(frames[key][1])[top:top + CROP, left:left + CROP]
    return window[:, ::-1] if flipped else window


def test_train_batches_blur_with_the_real_blurred_frame(prepared):
    _, data_dir, frames, _ = prepared
    cfg = _config(data_dir, crop_size=CROP, batch_size=4, tasks=("blur",), prefetch_batches=0, num_parallel_calls=1)
    batches = input_pipeline.create_train_iterator(cfg)
    train_frames = {key: pair for key, pair in frames.items() if key[0] == "train"}
    blurred_seen = plain_seen = 0
    for _ in range(2):
        batch = next(batches)
        for source, target, labels, vector in zip(batch["source"], batch["target"], batch["task_labels"],
                                                  batch["edit_vector"]):
            place = _locate(source, train_frames)
            if labels[0]:
                np.testing.assert_allclose(target, _blurred_window(frames, *place), atol=1e-5)
                assert vector[0] == cfg.motion_blur.paired_beta
                blurred_seen += 1
            else:
                np.testing.assert_array_equal(target, source)
                plain_seen += 1
    assert blurred_seen and plain_seen
    assert batches.num_skipped == 0


def test_benchmark_eval_sets_are_fixed_validation_pairs_with_synthesised_effects(prepared):
    _, data_dir, frames, _ = prepared
    cfg = _config(data_dir, crop_size=CROP, num_parallel_calls=1, **{"eval.size": 2})
    sets = input_pipeline.create_eval_sets(cfg)
    assert list(sets) == list(input_pipeline.eval_set_names())
    validation = {key: pair for key, pair in frames.items() if key[0] == "val"}
    places = [_locate(source, validation) for source in sets["blur"]["source"]]
    assert {key for key, *_ in places} == set(validation)  # both validation frames, nothing from train
    for target, place in zip(sets["blur"]["target"], places):
        np.testing.assert_allclose(target, _blurred_window(frames, *place), atol=1e-5)
    for name, batch in sets.items():  # the same crops under every set; the synthesised effects change the target
        np.testing.assert_array_equal(batch["source"] * batch["mask"], sets["blur"]["source"] * batch["mask"])
        if name != "blur":
            assert not np.allclose(batch["target"], sets["blur"]["target"], atol=1e-3), name
    again = input_pipeline.create_eval_sets(cfg)
    for name in ("blur", "blur+grain+colour"):
        for field in sets[name]:
            np.testing.assert_array_equal(again[name][field], sets[name][field], err_msg=f"{name} {field}")


def test_blurred_key_is_validated(prepared):
    _, data_dir, _, _ = prepared
    with pytest.raises(ValueError, match=r"config\.data\.source\.tfds_blurred_key = 'sharp' is invalid; allowed: "
                                         r"\"\" \(none\) or an image feature other than source\.tfds_image_key"):
        _config(data_dir, **{"source.tfds_blurred_key": "sharp"})
    source_config = _config(data_dir, **{"source.tfds_blurred_key": "motion"}).source
    with pytest.raises(ValueError, match=r"source\.tfds_blurred_key='motion' is not a feature of 'reds_editing/full'; "
                                         r"its features: \['blurred', 'clip_id', 'frame_id', 'sharp'\]"):
        create_source(source_config, "train")
    assert isinstance(create_source(_config(data_dir).source, "heldout"), PairedTfdsSource)
