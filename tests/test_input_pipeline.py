"""The multitask input pipeline: batch contract, determinism / resumption, host slicing, robustness, eval sets."""
import io
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import input_pipeline
from input_pipeline import preview
from input_pipeline.config import default_data_config, validate_data_config
from input_pipeline.images import UnreadableImage, decode_image, fit_to_crop
from input_pipeline.tasks import TASKS, label_table


def small_config(**overrides) -> ml_collections.ConfigDict:
    cfg = default_data_config()
    cfg.crop_size = 32
    cfg.batch_size = 4
    cfg.film_grain.monte_carlo_samples = 4
    cfg.eval.size = 2
    cfg.prefetch_batches = 0
    cfg.update_from_flattened_dict(overrides)
    validate_data_config(cfg)
    return cfg


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def bundled_batches():
    cfg = small_config(label_set="combinations")
    return cfg, take(input_pipeline.create_train_iterator(cfg), 3)


# --- config --------------------------------------------------------------------------------------------------

def test_default_config_validates():
    validate_data_config(default_data_config())


@pytest.mark.parametrize("key,value", [
    ("crop_size", 8), ("source.kind", "s3"), ("label_set", "pairs"), ("film_grain.radii", (0.5,)),
    ("tasks", ("fog",)), ("sharpen.amount_range", (3.0, 1.0)), ("small_image_policy", "crop"),
    ("motion_blur.angle_mode", "spin"), ("inpainting.max_vertices", 2),
])
def test_invalid_config_names_key_and_value(key, value):
    with pytest.raises(ValueError) as error:
        small_config(**{key: value})
    assert key in str(error.value) and repr(value) in str(error.value)


def test_label_tables():
    single = label_table("single")
    assert single.shape == (6, 5) and set(single.sum(1)) == {0.0, 1.0}
    assert label_table("combinations").shape == (32, 5)
    only_grain = label_table("single", ("grain",))
    np.testing.assert_array_equal(only_grain, [[0, 0, 0, 0, 0], [0, 1, 0, 0, 0]])


# --- batch contract ------------------------------------------------------------------------------------------

def test_batch_fields_follow_the_contract(bundled_batches):
    cfg, batches = bundled_batches
    spec = input_pipeline.batch_spec(cfg, cfg.batch_size)
    for batch in batches:
        assert {k: (v.shape, str(v.dtype)) for k, v in batch.items()} == spec
        for key in ("source", "target", "reference"):
            assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
        labels, vector = batch["task_labels"], batch["edit_vector"]
        np.testing.assert_array_equal(vector[:, 4:], labels)
        for scalar, task in ((0, 0), (1, 1), (2, 4), (3, 4)):  # beta, sigma, lambda, mu follow their task
            assert np.all((vector[:, scalar] != 0) == (labels[:, task] == 1)), (scalar, vector, labels)
        for i in range(cfg.batch_size):
            if labels[i, 2] == 0:
                assert not batch["reference"][i].any()
            if labels[i, 3] == 0:
                assert np.all(batch["mask"][i] == 1)
            else:
                hole = batch["mask"][i, ..., 0] == 0
                assert hole.any() and not batch["source"][i][hole].any()
            if not labels[i].any():
                np.testing.assert_array_equal(batch["source"][i], batch["target"][i])


def test_single_label_set_switches_at_most_one_task():
    cfg = small_config(tasks=("colour", "sharpen"))
    batch = next(input_pipeline.create_train_iterator(cfg))
    labels = batch["task_labels"]
    assert labels.sum(1).max() <= 1 and not labels[:, [0, 1, 3]].any()


# --- determinism ---------------------------------------------------------------------------------------------

def test_same_seed_same_batches_and_resume_at_step_k(bundled_batches):
    cfg, batches = bundled_batches
    for again, first in zip(take(input_pipeline.create_train_iterator(cfg), 2), batches):
        assert_batches_equal(again, first)
    resumed = input_pipeline.create_train_iterator(cfg, start_step=2)
    assert_batches_equal(next(resumed), batches[2])
    assert resumed.step == 3


def test_other_seed_other_batches(bundled_batches):
    cfg, batches = bundled_batches
    other = small_config(label_set="combinations", seed=cfg.seed + 1)
    assert not np.array_equal(next(input_pipeline.create_train_iterator(other))["target"], batches[0]["target"])


def test_hosts_read_disjoint_slices_of_the_global_batch(bundled_batches):
    cfg, batches = bundled_batches
    hosts = [next(input_pipeline.create_train_iterator(cfg, start_step=1, process_index=p, process_count=2))
             for p in range(2)]
    for key in batches[1]:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in hosts]), batches[1][key], err_msg=key)


# --- robustness ----------------------------------------------------------------------------------------------

def _png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Good photos in every awkward format, plus a corrupt, a truncated and a too-small file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
    (root / "nested").mkdir()
    Image.fromarray(rgb).save(root / "nested" / "rgb.jpg", quality=90)
    Image.fromarray(rgb).save(root / "rgb.webp")
    (root / "grey.png").write_bytes(_png(rgb[..., 0]))
    (root / "rgba.png").write_bytes(_png(np.concatenate([rgb, rgb[..., :1]], -1)))
    Image.fromarray((rng.integers(0, 65536, (40, 40))).astype(np.uint16)).save(root / "deep16.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray(rgb[:20, :20]).save(root / "small.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("policy,skipped", [("upscale", {"corrupt.png", "truncated.jpg"}),
                                            ("skip", {"corrupt.png", "truncated.jpg", "small.png"})])
def test_bad_files_are_skipped_and_counted(messy_folder, policy, skipped):
    cfg = small_config(**{"source.kind": "folder", "source.folder": str(messy_folder),
                          "source.heldout_per_mille": 0, "small_image_policy": policy})
    iterator = input_pipeline.create_train_iterator(cfg)
    batches = take(iterator, 3)  # 12 examples: more than one epoch of the 9 images
    assert all(np.isfinite(b["target"]).all() for b in batches)
    assert set(iterator.skipped_files) == skipped and iterator.num_skipped == len(skipped)


def test_decoding_converts_grey_rgba_and_keeps_16_bit_precision():
    grey = decode_image(_png(np.full((4, 4), 128, np.uint8)))
    assert grey.shape == (4, 4, 3) and np.allclose(grey, 128 / 255)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half fully transparent -> white
    decoded = decode_image(_png(rgba))
    np.testing.assert_allclose(decoded[0, 0], [1, 0, 0])
    np.testing.assert_allclose(decoded[3, 0], [1, 1, 1])
    deep = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000 + 1
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    np.testing.assert_allclose(decode_image(buffer.getvalue())[..., 0], deep / 65535.0, rtol=1e-6)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_damaged_files_decode_or_raise_unreadable(image_format):
    """Flipped and cut bytes: a valid image in [0, 1] or UnreadableImage, never another exception."""
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format=image_format)
    intact = buffer.getvalue()
    for trial in range(40):
        damaged = bytearray(intact[: rng.integers(1, len(intact))] if trial % 2 else intact)
        for position in rng.integers(0, len(damaged), 3 if trial % 2 == 0 else 0):
            damaged[position] = rng.integers(0, 256)
        try:
            image = decode_image(bytes(damaged))
        except UnreadableImage:
            continue
        assert image.ndim == 3 and image.shape[-1] == 3 and 0.0 <= image.min() <= image.max() <= 1.0


@pytest.mark.parametrize("policy", ["upscale", "pad", "skip"])
def test_small_image_policies(policy):
    small = np.random.default_rng(2).random((20, 40, 3)).astype(np.float32)
    fitted = fit_to_crop(small, 32, policy)
    if policy == "skip":
        assert fitted is None
    else:
        assert fitted.shape[0] >= 32 and fitted.shape[1] >= 32 and 0.0 <= fitted.min() <= fitted.max() <= 1.0
    assert fit_to_crop(small, 16, policy) is small


def test_paired_source_uses_the_real_blurred_frame(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        sharp = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        for folder, image in (("sharp", sharp), ("blur", 255 - sharp)):  # 'blurred' = negative, unmistakable
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(image).save(tmp_path / folder / name)
    (tmp_path / "sharp" / "unpaired.png").write_bytes((tmp_path / "sharp" / "a.png").read_bytes())
    cfg = small_config(**{"source.kind": "paired", "source.paired_source_folder": str(tmp_path / "sharp"),
                          "source.paired_target_folder": str(tmp_path / "blur"), "source.heldout_per_mille": 0,
                          "tasks": ("blur",), "motion_blur.paired_beta": 0.7})
    iterator = input_pipeline.create_train_iterator(cfg)
    batch = next(iterator)
    blurred = batch["task_labels"][:, 0] == 1
    assert blurred.any() and (~blurred).any()
    np.testing.assert_allclose(batch["target"][blurred], -batch["source"][blurred], atol=1e-6)
    np.testing.assert_allclose(batch["edit_vector"][blurred, 0], 0.7)
    np.testing.assert_array_equal(batch["target"][~blurred], batch["source"][~blurred])
    assert list(iterator.skipped_files) == [os.path.join(str(tmp_path / "sharp"), "unpaired.png")]


class TinyPhotos(tfds.core.GeneratorBasedBuilder):
    """A one-split TFDS dataset of random photos, prepared into a temporary data_dir."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"photo": tfds.features.Image(shape=(None, None, 3))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(3)}

    def _generate_examples(self, count):
        rng = np.random.default_rng(count)
        for i in range(count):
            yield i, {"photo": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)}


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    TinyPhotos(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = small_config(**{"source.kind": "tfds", "source.tfds_name": "tiny_photos",
                          "source.tfds_data_dir": str(tmp_path), "source.tfds_image_key": "photo"})
    batch = next(input_pipeline.create_train_iterator(cfg))
    assert batch["source"].shape == (4, 32, 32, 3) and np.isfinite(batch["target"]).all()


# --- evaluation sets and preview -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_sets():
    return input_pipeline.create_eval_sets(small_config())


def test_eval_sets_cover_single_tasks_and_the_paper_combinations(eval_sets):
    assert list(eval_sets) == list(TASKS) + ["blur+grain", "blur+grain+colour", "grain+colour",
                                             "grain+colour+sharpen"]
    for name, batch in eval_sets.items():
        expected = [float(t in name.split("+")) for t in TASKS]
        np.testing.assert_array_equal(batch["task_labels"], np.tile(expected, (2, 1)))
        assert batch["source"].shape == (2, 32, 32, 3)
    # The same photos under every set: only the effects differ.
    np.testing.assert_array_equal(eval_sets["blur"]["source"], eval_sets["grain+colour"]["source"])


def test_eval_sets_are_fixed(eval_sets):
    again = input_pipeline.create_eval_sets(small_config())
    for name in ("colour", "blur+grain+colour"):
        assert_batches_equal(again[name], eval_sets[name])


def test_preview_writes_a_gallery(tmp_path):
    config_file = tmp_path / "tiny_config.py"
    config_file.write_text(
        "import ml_collections\n"
        "from input_pipeline.config import default_data_config\n"
        "def get_config(arg=None):\n"
        "    config = ml_collections.ConfigDict()\n"
        "    config.data = default_data_config()\n"
        "    config.data.crop_size = int(arg)\n"
        "    config.data.film_grain.monte_carlo_samples = 2\n"
        "    return config\n")
    out = tmp_path / "grid.png"
    preview.main(["--config", f"{config_file}:32", "--out", str(out), "--examples", "1"])
    with Image.open(out) as grid:
        assert grid.size == (preview.LABEL_WIDTH + 4 * 130, preview.HEADER_HEIGHT + 9 * 130)
