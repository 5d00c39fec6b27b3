"""Paired restoration datasets from folders (input_pipeline/paired_folders.py) and their batches
(input_pipeline/captions.py with a paired_folder source).

Every input photo here is the negative of its target (input = 255 - target, lossless files), so a `source`
crop taken at another position or flipped another way than its `image` crop cannot pass `source == -image`.
"""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from input_pipeline.captions import (ImageBatches, default_image_data_config, fixed_examples, image_data_sections,
                                     paired_folder_source_config)
from input_pipeline.paired_folders import LAYOUTS, PairedFolderSource, list_pairs
from input_pipeline.sources import heldout_by_hash


def _save(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def _photo(seed, height=24, width=32):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _generic_dataset(root, count=4):
    """count pairs a0..a{count-1} (one target stored as lossless webp), plus one orphan on each side."""
    for i in range(count):
        target = _photo(i)
        _save(root / "input" / f"a{i}.png", 255 - target)
        if i == 0:
            _save(root / "target" / f"a{i}.webp", target, lossless=True)  # same stem, another extension
        else:
            _save(root / "target" / f"a{i}.png", target)
    _save(root / "input" / "orphan.png", _photo(100))
    _save(root / "target" / "lonely.png", _photo(101))
    (root / "input" / "notes.txt").write_text("not an image")
    return root


def _data_config(root, layout="generic", **overrides):
    cfg = default_image_data_config()
    cfg.source = paired_folder_source_config()
    cfg.source.folder, cfg.source.layout, cfg.source.heldout_per_mille = str(root), layout, 0
    cfg.crop_size, cfg.resize_short_side, cfg.batch_size, cfg.num_parallel_calls = 16, 0, 4, 1
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _problems(data_cfg):
    config = ml_collections.ConfigDict({"data": data_cfg})
    return [problem for section in image_data_sections() for problem in section.problems(config)]


# --- listing -------------------------------------------------------------------------------------------------

# One (input, target) pair per layout, plus files the layout must ignore.
LAYOUT_EXAMPLES = {
    "generic": ([("input/x.png", "target/x.jpg")], ["preview.png", "inputs/x.png"]),
    "gopro": ([("GOPR0372_07_00/blur/000047.png", "GOPR0372_07_00/sharp/000047.png"),
               ("GOPR0384_11_01/blur/000001.png", "GOPR0384_11_01/sharp/000001.png")],
              ["GOPR0372_07_00/blur_gamma/000047.png"]),
    "rain13k": ([("input/rain-001.png", "target/rain-001.png")], []),
    "snow100k": ([("synthetic/beach_00001.jpg", "gt/beach_00001.jpg")], ["mask/beach_00001.jpg"]),
    "reside": ([("hazy/0001_0.8_0.2.jpg", "clear/0001.png"), ("hazy/1400_1.png", "clear/1400.png"),
                ("hazy/1400_2.png", "clear/1400.png")], []),
    "lol": ([("low/1.png", "high/1.png")], []),
    "shiq": ([("00001_A.png", "00001_D.png"), ("00002_A.png", "00002_D.png")], ["00001_S.png", "00001_T.png"]),
    "lcdmoire": ([("moire/000000.png", "clear/000000.png")], []),
}


def test_every_layout_has_an_example():
    assert set(LAYOUT_EXAMPLES) == set(LAYOUTS)


@pytest.mark.parametrize("layout", sorted(LAYOUT_EXAMPLES))
def test_each_layout_lists_its_pairs_and_ignores_other_files(tmp_path, layout):
    pairs, ignored = LAYOUT_EXAMPLES[layout]
    for path in {p for pair in pairs for p in pair} | set(ignored):
        _save(tmp_path / path, _photo(0, 4, 4))
    listed, unpaired = list_pairs(str(tmp_path), layout)
    assert listed == sorted((os.path.normpath(i), os.path.normpath(t)) for i, t in pairs)
    assert unpaired == []


def test_unpaired_files_are_counted_and_logged_once(tmp_path, caplog):
    _generic_dataset(tmp_path)
    with caplog.at_level("WARNING"):
        pairs, unpaired = list_pairs(str(tmp_path), "generic")
    assert pairs == [(os.path.join("input", "a0.png"), os.path.join("target", "a0.webp"))] + [
        (os.path.join("input", f"a{i}.png"), os.path.join("target", f"a{i}.png")) for i in (1, 2, 3)]
    assert unpaired == [os.path.join("input", "orphan.png"), os.path.join("target", "lonely.png")]
    assert len([r for r in caplog.records if "without a counterpart" in r.getMessage()]) == 1


def test_shiq_pairs_a_with_d_in_one_folder(tmp_path):
    for name in ("1_A", "1_D", "1_S", "1_T", "2_A", "2_D", "3_A"):
        _save(tmp_path / f"{name}.png", _photo(0, 4, 4))
    pairs, unpaired = list_pairs(str(tmp_path), "shiq")
    assert pairs == [("1_A.png", "1_D.png"), ("2_A.png", "2_D.png")] and unpaired == ["3_A.png"]


def test_the_split_is_keyed_on_the_target_so_hazy_siblings_stay_together(tmp_path):
    for clear_id in range(1, 21):
        target = _photo(clear_id)
        _save(tmp_path / "clear" / f"{clear_id}.png", target)
        for beta in (1, 2):
            _save(tmp_path / "hazy" / f"{clear_id}_{beta}.png", 255 - target)
    train, heldout = (PairedFolderSource(str(tmp_path), "reside", split, 500) for split in ("train", "heldout"))
    assert len(train) + len(heldout) == 40 and len(train) and len(heldout)
    for source, want_heldout in ((train, False), (heldout, True)):
        for hazy in source.ids:
            target = source.targets[hazy]
            assert target == os.path.join("clear", os.path.basename(hazy).split("_")[0] + ".png")
            assert heldout_by_hash(target, 500) == want_heldout
    train_targets, heldout_targets = set(train.targets.values()), set(heldout.targets.values())
    assert not train_targets & heldout_targets  # no clear image on both sides
    assert all(list(train.targets.values()).count(t) == 2 for t in train_targets)  # both hazy versions


def test_an_empty_or_mismatched_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"paired folder .*empty.* \(layout 'generic'\) has no pairs: expected "
                                         r"input files ROOT/input/NAME\.ext with target files ROOT/target/"):
        list_pairs(str(tmp_path / "empty"), "generic")
    _generic_dataset(tmp_path / "generic")
    with pytest.raises(ValueError, match=r"generic' \(layout 'lol'\) has no pairs: expected input files "
                                         r"ROOT/low/NAME\.png with target files ROOT/high/NAME\.png; found 10 image "
                                         r"file\(s\), 0 of them inputs and 0 targets"):
        PairedFolderSource(str(tmp_path / "generic"), "lol", "train", 0)


# --- batches -------------------------------------------------------------------------------------------------

def _signed(photo):
    return photo.astype(np.float32) / 127.5 - 1.0


def _locate(crop, photo):
    """[(top, left, flipped)] of every place where `crop` (c, c, 3) in [-1, 1] is a crop of uint8 `photo`."""
    c, photo = crop.shape[0], _signed(photo)
    found = []
    for flipped in (False, True):
        for top in range(photo.shape[0] - c + 1):
            for left in range(photo.shape[1] - c + 1):
                window = photo[top:top + c, left:left + c]
                if np.allclose(crop, window[:, ::-1] if flipped else window, atol=1e-5):
                    found.append((top, left, flipped))
    return found


def test_source_is_the_real_input_cropped_and_flipped_with_its_target(tmp_path):
    _generic_dataset(tmp_path)
    targets = [_photo(i) for i in range(4)]

    def degrade(image, seed):
        raise AssertionError("a paired_folder source must not call degrade")

    batches = ImageBatches(_data_config(tmp_path), degrade=degrade)
    flips = set()
    for _ in range(2):  # 8 examples: two epochs of the 4 pairs
        batch = next(batches)
        assert set(batch) == {"image", "source"} and batch["source"].shape == (4, 16, 16, 3)
        assert batch["source"].dtype == np.float32
        for image, source in zip(batch["image"], batch["source"]):
            [(k, top, left, flipped)] = [(k, *place) for k, photo in enumerate(targets)
                                         for place in _locate(image, photo)]
            flips.add(flipped)
            window = (255 - targets[k])[top:top + 16, left:left + 16]  # the input photo, same place
            np.testing.assert_allclose(source, _signed(window[:, ::-1] if flipped else window), atol=1e-5)
    assert flips == {False, True}  # the flip is exercised, and applied to the input too
    assert batches.num_skipped == 0


def test_both_photos_of_a_pair_get_the_same_resize_and_resume_gives_the_same_batch(tmp_path):
    _generic_dataset(tmp_path)
    cfg = _data_config(tmp_path, resize_short_side=20)  # 24x32 -> 20x27: bicubic, and still source == -image
    batches = ImageBatches(cfg)
    first, second = next(batches), next(batches)
    np.testing.assert_allclose(second["source"], -second["image"], atol=1e-5)
    resumed = next(ImageBatches(cfg, start_step=1))
    for key in ("image", "source"):
        np.testing.assert_array_equal(resumed[key], second[key])
    assert not np.array_equal(first["image"], second["image"])


def test_corrupt_and_mismatched_pairs_are_skipped_and_counted(tmp_path):
    _generic_dataset(tmp_path)
    (tmp_path / "input" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    _save(tmp_path / "target" / "corrupt.png", _photo(7))
    _save(tmp_path / "input" / "resized.png", 255 - _photo(8, 30, 40))
    _save(tmp_path / "target" / "resized.png", _photo(8))
    batches = ImageBatches(_data_config(tmp_path, batch_size=6))
    for _ in range(3):  # 18 examples: every one of the 6 pairs is met
        batch = next(batches)
        np.testing.assert_allclose(batch["source"], -batch["image"], atol=1e-5)
    skipped = batches.skipped_files
    assert batches.num_skipped == 2 and set(skipped) == {os.path.join("input", "corrupt.png"),
                                                         os.path.join("input", "resized.png")}
    assert "differ in size" in skipped[os.path.join("input", "resized.png")]
    assert "corrupt.png" in skipped[os.path.join("input", "corrupt.png")]


def test_fixed_examples_of_a_paired_folder_carry_the_real_input(tmp_path):
    # RESIDE indoor clear images have a 10-pixel border the hazy ones lack: cropped away, the pair aligns.
    for clear_id in range(1, 4):
        target = _photo(clear_id)
        _save(tmp_path / "clear" / f"{clear_id}.png", np.pad(target, [(10, 10), (10, 10), (0, 0)]))
        _save(tmp_path / "hazy" / f"{clear_id}_1.png", 255 - target)
    cfg = _data_config(tmp_path, layout="reside")
    examples = fixed_examples(cfg, "train", 3, seed=0)
    assert set(examples) == {"image", "source"} and examples["source"].shape == (3, 16, 16, 3)
    np.testing.assert_allclose(examples["source"], -examples["image"], atol=1e-5)
    for i in range(3):
        assert _locate(examples["image"][i], _photo(i + 1))  # the border is gone from the target
    again = fixed_examples(cfg, "train", 3, seed=0, degrade=lambda image, seed: image)  # degrade is not called
    np.testing.assert_array_equal(again["source"], examples["source"])
    with pytest.raises(ValueError, match="'paired_folder' has no captions"):
        fixed_examples(cfg, "train", 1, seed=0, captioned=True)


# --- config --------------------------------------------------------------------------------------------------

def test_config_validates_and_names_a_bad_layout_and_folder(tmp_path):
    _generic_dataset(tmp_path)
    assert _problems(_data_config(tmp_path)) == []
    assert _problems(default_image_data_config()) == []  # the bundled default carries the layout key too
    assert set(paired_folder_source_config()) == {"kind", "folder", "layout", "heldout_per_mille"}
    bad = _data_config(tmp_path, layout="x")
    assert _problems(bad) == ["config.data.source.layout = 'x' is invalid; allowed: one of 'generic', 'gopro', "
                              "'rain13k', 'snow100k', 'reside', 'lol', 'shiq', 'lcdmoire'"]
    missing = _data_config(tmp_path / "nowhere")
    assert _problems(missing) == [f"config.data.source.folder = {str(tmp_path / 'nowhere')!r} is invalid; "
                                  "allowed: an existing directory of images when config.data.source.kind = "
                                  "'paired_folder'"]
