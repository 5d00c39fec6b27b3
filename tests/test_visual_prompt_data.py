"""The visual-prompting data (input_pipeline.visual_tasks): grids, each task's pair property, Canny against
skimage, determinism, the labelled-folder source and the clear errors. Everything TF runs inside
tf.data.Dataset.map (graph mode), as in training."""
import numpy as np
import pytest
import scipy.ndimage
import skimage.color
import skimage.data
import skimage.feature
import tensorflow as tf
from ml_collections import ConfigDict
from PIL import Image

from input_pipeline.images import UnreadableImage
from input_pipeline.sources import BundledSource
from input_pipeline.visual_tasks import (HINT_FILL, OOD_TASKS, SYNTHESISABLE_TASKS, TASK_IDS, VISUAL_TASKS,
                                         LabelledFolderSource, assemble_grid, canny, check_grid,
                                         create_visual_source, visual_prompt_example_fn)
from input_pipeline.visual_tasks import pairs
from input_pipeline.visual_tasks.examples import ALL_TASKS
from input_pipeline.visual_tasks.render import DEPTH_TABLE, SEGMENTATION_PALETTE

SEED = tf.constant([3, 7], tf.int64)


def in_graph(fn, *args):
    """fn(*args) evaluated inside tf.data.Dataset.map, returned as numpy."""
    dataset = tf.data.Dataset.from_tensors(tuple(tf.constant(a) for a in args)).map(fn)
    return next(iter(dataset.as_numpy_iterator()))


@pytest.fixture(scope="module")
def photo():
    """A 48 x 48 (every other pixel of a 96 px crop) astronaut face, float32 in [0, 1]; 48 is a multiple of 4."""
    return skimage.data.astronaut()[170:266:2, 190:286:2].astype(np.float32) / 255.0


def pair_of(task, image, seed=SEED, label_map=None):
    if label_map is None:
        label_map = np.zeros(image.shape[:2], np.float32)
    return in_graph(lambda i, m, s: ALL_TASKS[task].pair(i, m, s), image, label_map, seed)


# --- the grid ------------------------------------------------------------------------------------------------

def test_grid_layout_hint_never_holds_the_answer():
    rng = np.random.default_rng(0)
    x_r, y_r, x_q, y_q, other = (rng.uniform(-1, 1, (8, 12, 3)).astype(np.float32) for _ in range(5))
    grid = in_graph(lambda a, b, c, d: assemble_grid(a, b, c, d), x_r, y_r, x_q, y_q)
    other_grid = in_graph(lambda a, b, c, d: assemble_grid(a, b, c, d), x_r, y_r, x_q, other)
    hint, target, mask = grid["hint"], grid["target"], grid["answer_mask"]
    assert hint.shape == target.shape == (16, 24, 3) and mask.shape == (16, 24, 1)
    for image in (hint, target):
        np.testing.assert_array_equal(image[:8, :12], x_r)
        np.testing.assert_array_equal(image[:8, 12:], y_r)
        np.testing.assert_array_equal(image[8:, :12], x_q)
    np.testing.assert_array_equal(target[8:, 12:], y_q)
    assert np.all(hint[8:, 12:] == HINT_FILL)  # constant, and the same for another answer:
    np.testing.assert_array_equal(other_grid["hint"], hint)
    expected_mask = np.zeros((16, 24, 1), np.float32)
    expected_mask[8:, 12:] = 1.0
    np.testing.assert_array_equal(mask, expected_mask)
    inference = assemble_grid(tf.constant(x_r), tf.constant(y_r), tf.constant(x_q))
    assert inference["target"] is None
    np.testing.assert_array_equal(inference["hint"].numpy(), hint)


def test_grid_errors_name_the_sizes():
    cell = tf.zeros([8, 8, 3])
    with pytest.raises(ValueError, match="differ in shape.*query.*16, 16, 3"):
        assemble_grid(cell, cell, tf.zeros([16, 16, 3]), cell)
    with pytest.raises(ValueError, match=r"12x12 px.*24x24.*factor 8"):
        check_grid(12, 8)
    with pytest.raises(ValueError, match=r"16x20 px.*factor 8"):
        check_grid((16, 20), 8)
    with pytest.raises(ValueError, match="factor 16"):
        assemble_grid(cell, cell, cell, cell, factor=16)
    check_grid(16, 8)
    check_grid((32, 64), 8)
    assemble_grid(cell, cell, cell, cell, factor=8)


# --- each task's pair ----------------------------------------------------------------------------------------

def test_colourisation_input_is_grey(photo):
    x, y = pair_of("colourisation", photo)
    np.testing.assert_array_equal(y, photo)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    luma = photo @ np.array([0.2989, 0.587, 0.114], np.float32)  # ITU-R 601
    np.testing.assert_allclose(x[..., 0], luma, atol=2e-3)


def test_super_resolution_input_is_the_area_down_bicubic_up_image(photo):
    x, y = pair_of("super_resolution", photo)
    np.testing.assert_array_equal(y, photo)
    blocks = photo.reshape(12, 4, 12, 4, 3).mean(axis=(1, 3))  # area downsampling x4, independently
    expected = np.clip(tf.image.resize(blocks[None], [48, 48], method="bicubic")[0].numpy(), 0.0, 1.0)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert np.abs(x - photo).mean() > 0.01  # detail is really lost
    with pytest.raises(ValueError, match="divisible by 4"):
        pairs.down_up_sample(tf.zeros([10, 12, 3]))


def test_inpainting_input_is_image_outside_and_grey_inside(photo):
    x, y, mask = in_graph(lambda i, s: (*pairs.make_inpainting(i, s), pairs.inpainting_mask(s, 48)), photo, SEED)
    np.testing.assert_array_equal(y, photo)
    hole = mask[..., 0] == 0
    assert 0.005 < hole.mean() < 0.8
    np.testing.assert_array_equal(x[~hole], photo[~hole])
    assert np.all(x[hole] == pairs.INPAINT_FILL)


def test_denoising_residual_has_the_seeded_std(photo):
    for seed in ([3, 7], [11, 2]):
        x, y = pair_of("denoising", photo, tf.constant(seed, tf.int64))
        sigma = float(in_graph(pairs.noise_sigma, tf.constant(seed, tf.int64)))
        assert pairs.NOISE_SIGMA_RANGE[0] <= sigma <= pairs.NOISE_SIGMA_RANGE[1]
        residual = x - y
        # 6912 samples: the sample std's relative error is ~ 1 / sqrt(2 n) = 0.85 %.
        np.testing.assert_allclose(residual.std(), sigma, rtol=0.04)
        assert abs(residual.mean()) < 4 * sigma / np.sqrt(residual.size)


def test_edge_output_is_binary_white_on_black(photo):
    x, y = pair_of("edges", photo)
    np.testing.assert_array_equal(x, photo)
    assert set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y[..., 0], y[..., 1])
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    assert 0.01 < y.mean() < 0.3


def test_contrast_input_has_the_same_mean_and_lower_std(photo):
    x, y = pair_of("contrast", photo)
    factor = float(in_graph(pairs.contrast_factor, SEED))
    np.testing.assert_array_equal(y, photo)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), photo.mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 1)), factor * photo.std(axis=(0, 1)), rtol=1e-4)
    assert factor < 1.0 and np.all(x.std(axis=(0, 1)) < photo.std(axis=(0, 1)))


def test_deblurring_input_is_blurred(photo):
    x, y = pair_of("deblurring", photo)
    np.testing.assert_array_equal(y, photo)
    gradient_energy = lambda image: (np.diff(image, axis=0) ** 2).sum() + (np.diff(image, axis=1) ** 2).sum()
    assert gradient_energy(x) < 0.7 * gradient_energy(photo)
    np.testing.assert_allclose(x.mean(), photo.mean(), atol=0.02)  # the kernel sums to 1


def test_deraining_adds_bright_streaks(photo):
    x, y = pair_of("deraining", photo)
    np.testing.assert_array_equal(y, photo)
    assert np.all(x >= photo - 1e-6) and x.max() <= 1.0
    assert 0.01 < (x - photo > 0.05).mean() < 0.6


def test_label_renders_use_the_fixed_palette_and_ramp(photo):
    labels = np.zeros((48, 48), np.float32)
    labels[:, 24:] = 15.0
    labels[:8, :8] = 255.0
    x, y = pair_of("segmentation", photo, label_map=labels)
    np.testing.assert_array_equal(x, photo)
    np.testing.assert_array_equal(y[0, 30], np.array([192, 128, 128], np.float32) / 255.0)  # VOC "person" (15)
    np.testing.assert_array_equal(y[20, 0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(y[0, 0], np.array([224, 224, 192], np.float32) / 255.0)
    depth = np.tile(np.linspace(2.0, 10.0, 48, dtype=np.float32), (48, 1))
    _, rendered = pair_of("depth", photo, label_map=depth)
    np.testing.assert_array_equal(rendered[0, 0], DEPTH_TABLE[0])
    np.testing.assert_array_equal(rendered[0, -1], DEPTH_TABLE[255])
    assert np.all(np.diff(DEPTH_TABLE.sum(axis=1)) > 0)  # brightness rises along the ramp
    assert SEGMENTATION_PALETTE.shape == DEPTH_TABLE.shape == (256, 3)


def test_pairs_are_deterministic_per_seed(photo):
    seeded = ("inpainting", "deblurring", "denoising", "deraining", "contrast")
    label_map = np.zeros((48, 48), np.float32)

    def all_pairs(image, seed):  # every task under `seed` and under another seed, in one graph
        other = seed + tf.constant([1, 0], tf.int64)
        return ({t: ALL_TASKS[t].pair(image, label_map, seed) for t in SYNTHESISABLE_TASKS},
                {t: ALL_TASKS[t].pair(image, label_map, other)[0] for t in seeded})

    dataset = tf.data.Dataset.from_tensors((tf.constant(photo), SEED)).repeat(2).map(all_pairs)
    (first, other), (again, _) = dataset.as_numpy_iterator()
    for task in SYNTHESISABLE_TASKS:
        for a, b in zip(first[task], again[task]):
            np.testing.assert_array_equal(a, b)
    for task in seeded:
        assert not np.array_equal(other[task], first[task][0]), task


# --- Canny -----------------------------------------------------------------------------------------------------

def edge_f1(mine: np.ndarray, reference: np.ndarray) -> float:
    """F1 of edge pixels where a pixel counts as matched when the other map has an edge within 1 px."""
    near = np.ones((3, 3), bool)
    precision = (mine & scipy.ndimage.binary_dilation(reference, near)).sum() / mine.sum()
    recall = (reference & scipy.ndimage.binary_dilation(mine, near)).sum() / reference.sum()
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_canny_agrees_with_skimage(name):
    grey = skimage.color.rgb2gray(getattr(skimage.data, name)()).astype(np.float32)[::3, ::3].copy()
    mine = in_graph(lambda g: canny(g), grey)
    reference = skimage.feature.canny(grey)  # same defaults: sigma 1, thresholds 0.1 / 0.2
    # Measured: F1 0.994 (astronaut, 171 x 171), 0.984 (coffee, 134 x 200); edge counts within 2.5 %.
    assert edge_f1(mine, reference) >= 0.95
    assert 0.8 < mine.sum() / reference.sum() < 1.25


def test_canny_finds_a_step_edge():
    image = np.zeros((20, 20), np.float32)
    image[:, 10:] = 1.0
    edges = in_graph(lambda g: canny(g), image)
    columns = np.nonzero(edges.any(axis=0))[0]
    assert set(columns) <= {9, 10} and edges[1:-1].any(axis=1).all()
    assert not edges[0].any() and not edges[-1].any()  # the border ring is never an edge


# --- examples ----------------------------------------------------------------------------------------------------

def examples(source, indices, seed=0, **kwargs):
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
    return list(dataset.map(visual_prompt_example_fn(source, 32, seed, **kwargs)).as_numpy_iterator())


@pytest.fixture(scope="module")
def bundled():
    return BundledSource("train")


def test_examples_pair_a_reference_and_a_query_of_one_task(bundled):
    batch = examples(bundled, [*range(8), *range(4)])  # the last four repeat indices 0-3
    for example in batch:
        assert set(example) == {"reference_input", "reference_output", "query", "answer", "task_id"}
        for key in ("reference_input", "reference_output", "query", "answer"):
            assert example[key].shape == (32, 32, 3) and example[key].dtype == np.float32
        assert int(example["task_id"]) in [TASK_IDS[n] for n in SYNTHESISABLE_TASKS if n in VISUAL_TASKS]
        assert not np.array_equal(example["reference_output"], example["answer"])  # different photos
        if int(example["task_id"]) != TASK_IDS["denoising"]:
            assert example["query"].min() >= -1.0 and example["query"].max() <= 1.0
    assert len({int(e["task_id"]) for e in batch}) >= 3
    for first, again in zip(batch[:4], batch[8:]):  # a pure function of (seed, index)
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])


def test_example_reference_and_query_follow_the_task(bundled):
    for example in examples(bundled, range(3), tasks=("super_resolution", "colourisation")):
        to_unit = lambda v: (v + 1.0) / 2.0
        for x, y in ((example["reference_input"], example["reference_output"]), (example["query"], example["answer"])):
            if int(example["task_id"]) == TASK_IDS["super_resolution"]:
                expected = pairs.down_up_sample(tf.constant(to_unit(y))).numpy()
            else:
                expected = pairs.grey3(tf.constant(to_unit(y))).numpy()
            np.testing.assert_allclose(to_unit(x), expected, atol=1e-5)
    ood = examples(bundled, range(4), tasks=tuple(OOD_TASKS))
    assert {int(e["task_id"]) for e in ood} <= {TASK_IDS[n] for n in OOD_TASKS}


def test_example_errors(bundled):
    with pytest.raises(ValueError, match="segmentation.*labelled_folder"):
        visual_prompt_example_fn(bundled, 32, 0, ("colourisation", "segmentation"))
    with pytest.raises(ValueError, match="unknown visual task"):
        visual_prompt_example_fn(bundled, 32, 0, ("colorization",))


# --- the labelled-folder source -----------------------------------------------------------------------------------

def _write_labelled(root, names=("a", "sub/b", "c")):
    rng = np.random.default_rng(1)
    for stem in names:
        for folder in ("images", "maps"):
            (root / folder / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        labels = np.zeros((40, 48), np.uint8)
        labels[:, 24:] = 15
        labels[:20] += 1
        if stem == "c":
            np.save(root / "maps" / f"{stem}.npy", labels.astype(np.float32))
        else:
            Image.fromarray(labels).save(root / "maps" / f"{stem}.png")
    return str(root / "images"), str(root / "maps")


def test_labelled_folder_reads_maps_and_makes_segmentation_examples(tmp_path):
    images, maps = _write_labelled(tmp_path)
    source = LabelledFolderSource(images, maps, "segmentation", "train", heldout_per_mille=0)
    assert source.ids == ["a.png", "c.png", "sub/b.png"]
    photo, label_map = source.load(2)
    assert photo.shape == (40, 48, 3) and label_map.shape == (40, 48)
    assert set(np.unique(label_map)) == {0.0, 1.0, 15.0, 16.0}
    config = ConfigDict({"kind": "labelled_folder", "labelled_images_folder": images, "labelled_maps_folder": maps,
                         "label_kind": "segmentation", "heldout_per_mille": 0})
    assert create_visual_source(config, "train").ids == source.ids
    palette_colours = {tuple(SEGMENTATION_PALETTE[i]) for i in (0, 1, 15, 16)}
    # By default a labelled source serves its own labelled task as well as the synthesisable ones.
    batch = examples(source, range(24))
    task_ids = {int(e["task_id"]) for e in batch}
    assert TASK_IDS["segmentation"] in task_ids and TASK_IDS["depth"] not in task_ids
    for example in batch:
        if int(example["task_id"]) == TASK_IDS["segmentation"]:
            answer = (example["answer"] + 1.0) / 2.0
            assert {tuple(c) for c in answer.reshape(-1, 3)} <= palette_colours
            assert not np.array_equal(example["query"], example["reference_input"])  # two different photos


def test_labelled_folder_reads_16_bit_depth(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "maps").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "d.jpg")
    depth = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "maps" / "d.png")
    _, loaded = LabelledFolderSource(str(tmp_path / "images"), str(tmp_path / "maps"), "depth", "train", 0).load(0)
    np.testing.assert_array_equal(loaded, depth.astype(np.float32))


def test_labelled_folder_errors(tmp_path):
    images, maps = _write_labelled(tmp_path)
    (tmp_path / "maps" / "sub" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"no map in .* for .*sub/b\.png"):
        LabelledFolderSource(images, maps, "segmentation", "train", 0)
    with pytest.raises(ValueError, match="no maps folder"):
        LabelledFolderSource(images, None, "segmentation", "train", 0)
    with pytest.raises(ValueError, match="no maps folder"):
        create_visual_source(ConfigDict({"kind": "labelled_folder", "labelled_images_folder": images,
                                         "label_kind": "depth", "heldout_per_mille": 0}), "train")
    with pytest.raises(ValueError, match="label_kind"):
        LabelledFolderSource(images, maps, "normals", "train", 0)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "maps" / "sub" / "b.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "maps" / "a.png")  # wrong size
    source = LabelledFolderSource(images, maps, "segmentation", "train", 0)
    with pytest.raises(UnreadableImage, match="a.png"):
        source.load(0)
