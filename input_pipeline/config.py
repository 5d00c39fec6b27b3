"""Every knob of the multitask input pipeline, with one validator.

`default_data_config()` is embedded as `config.data` by the experiment configs; `data_problems(cfg)` lists every
invalid knob (key, value, what is allowed) for the experiment's one validation pass before anything compiles;
`validate_data_config(cfg)` raises them as one ValueError.
"""
from __future__ import annotations

import math

import ml_collections

TASKS = ("blur", "grain", "colour", "inpaint", "sharpen")  # the order of e1..e5 in the editing vector
SOURCE_KINDS = ("bundled", "folder", "paired", "tfds")
LABEL_SETS = ("single", "combinations")
SMALL_IMAGE_POLICIES = ("upscale", "pad", "skip")
MOTION_ANGLE_MODES = ("random", "fixed")


def default_data_config() -> ml_collections.ConfigDict:
    """The default: bundled scikit-image photos, 64 px crops, all five effects, the paper's label set."""
    cfg = ml_collections.ConfigDict()

    cfg.source = ml_collections.ConfigDict()
    cfg.source.kind = "bundled"  # one of SOURCE_KINDS
    cfg.source.folder = ""  # kind="folder": root, searched recursively for .jpg/.jpeg/.png/.webp
    cfg.source.paired_source_folder = ""  # kind="paired": sharp frames (the effect-free photos)
    cfg.source.paired_target_folder = ""  # kind="paired": the same names with the real motion blur applied
    cfg.source.tfds_name = ""  # kind="tfds": e.g. "tf_flowers"
    cfg.source.tfds_data_dir = ""  # kind="tfds": local data_dir (no downloads at run time)
    cfg.source.tfds_train_split = "train"
    cfg.source.tfds_heldout_split = "test"
    cfg.source.tfds_image_key = "image"
    # kind="tfds": a second image feature holding each record's real blurred frame (e.g. "blurred" for REDS,
    # input_pipeline/datasets/reds.py); it replaces the synthetic motion blur, as for kind="paired". "" = none.
    cfg.source.tfds_blurred_key = ""
    # folder / paired: a file is held out when hash(relative path) % 1000 < heldout_per_mille, so adding files
    # never moves an existing file between the splits. Bundled photos have a fixed, documented split.
    cfg.source.heldout_per_mille = 100

    cfg.crop_size = 64
    cfg.resize_short_side = 0  # >0: resize every photo so its short side has this length before cropping
    cfg.small_image_policy = "upscale"  # images with a side < crop_size: one of SMALL_IMAGE_POLICIES
    cfg.random_flip = True
    cfg.batch_size = 12  # global batch; each host gets batch_size // process_count
    cfg.seed = 0
    cfg.label_set = "single"  # "single": all-off + each single task (the paper); "combinations": any subset
    cfg.tasks = TASKS  # the tasks training may switch on (a subset gives the single-task baselines)
    cfg.num_parallel_calls = -1  # -1: tf.data AUTOTUNE (one per core); order stays deterministic either way
    cfg.prefetch_batches = 2

    cfg.motion_blur = ml_collections.ConfigDict()
    cfg.motion_blur.beta_range = (0.1, 1.0)  # beta drawn uniformly; beta = 0 is the identity
    cfg.motion_blur.max_length_at_256 = 21.0  # kernel length at beta = 1 in pixels of a 256 crop
    cfg.motion_blur.angle_mode = "random"  # one of MOTION_ANGLE_MODES
    cfg.motion_blur.angle_degrees = 0.0  # angle_mode="fixed"
    cfg.motion_blur.paired_beta = 1.0  # beta reported for a real blurred pair (kind="paired")

    cfg.film_grain = ml_collections.ConfigDict()
    cfg.film_grain.radii = (0.010, 0.025, 0.050, 0.075, 0.100)  # grain radius sigma, input pixels (paper)
    cfg.film_grain.filter_sigma = 0.8  # Gaussian filter of the grain rendering, pixels (Newson et al.)
    # 0: the grain without rendering noise (Newson's N -> infinity limit); N > 0 adds the rendering noise of
    # Newson et al.'s code with N samples (theirs uses 800), to mimic data made with it. See film_grain.py.
    cfg.film_grain.monte_carlo_samples = 0

    cfg.sharpen = ml_collections.ConfigDict()
    cfg.sharpen.amount_range = (1.0, 3.0)  # lambda
    cfg.sharpen.threshold_range = (0.0, 0.1)  # mu, on the [0, 1] intensity scale
    cfg.sharpen.blur_sigma = 1.0  # Gaussian of the unsharp mask, pixels

    cfg.inpainting = ml_collections.ConfigDict()
    cfg.inpainting.min_vertices = 4
    cfg.inpainting.max_vertices = 11
    cfg.inpainting.min_width_at_256 = 12.0
    cfg.inpainting.max_width_at_256 = 40.0
    cfg.inpainting.max_strokes = 3
    cfg.inpainting.box_probability = 0.5  # chance the stroke mask is OR'ed with a random box hole

    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.size = 8  # examples per evaluation set
    cfg.eval.seed = 1234
    return cfg


class _Problems(list):
    """Collects one line per invalid data key, in the project's one validation format."""

    def fail(self, key: str, value, allowed: str) -> None:
        self.append(f"config.data.{key} = {value!r} is invalid; allowed: {allowed}")


def _check_range(_fail, key: str, value, low: float, high: float):
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
            or not low <= value[0] <= value[1] <= high):
        _fail(key, value, f"a pair (min, max) with {low} <= min <= max <= {high}")


def _check_positive(_fail, key: str, value, *, integer: bool = False, allow_zero: bool = False):
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "an integer" if integer else "a number"
        _fail(key, value, f"{what} {'>= 0' if allow_zero else '> 0'}")


def data_problems(cfg: ml_collections.ConfigDict, *, process_count: int = 1) -> list[str]:
    """One line `config.data.KEY = VALUE is invalid; allowed: ...` per invalid data knob (all of them)."""
    problems = _Problems()
    _fail = problems.fail
    src = cfg.source
    if src.kind not in SOURCE_KINDS:
        _fail("source.kind", src.kind, f"one of {SOURCE_KINDS}")
    required = {"folder": ("folder",), "paired": ("paired_source_folder", "paired_target_folder"),
                "tfds": ("tfds_name", "tfds_image_key")}.get(src.kind, ())
    for key in required:
        if not src[key]:
            _fail(f"source.{key}", src[key], f"a non-empty value when source.kind={src.kind!r}")
    if not isinstance(src.tfds_blurred_key, str) or (
            src.kind == "tfds" and src.tfds_blurred_key and src.tfds_blurred_key == src.tfds_image_key):
        _fail("source.tfds_blurred_key", src.tfds_blurred_key,
              f'"" (none) or an image feature other than source.tfds_image_key={src.tfds_image_key!r}')
    if not (isinstance(src.heldout_per_mille, int) and 0 <= src.heldout_per_mille < 1000):
        _fail("source.heldout_per_mille", src.heldout_per_mille, "an integer in [0, 1000)")

    _check_positive(_fail, "crop_size", cfg.crop_size, integer=True)
    if cfg.crop_size < 16:
        _fail("crop_size", cfg.crop_size, "an integer >= 16 (masks and blur kernels need room)")
    _check_positive(_fail, "resize_short_side", cfg.resize_short_side, integer=True, allow_zero=True)
    if 0 < cfg.resize_short_side < cfg.crop_size:
        _fail("resize_short_side", cfg.resize_short_side, f"0 (off) or >= crop_size={cfg.crop_size}")
    if cfg.small_image_policy not in SMALL_IMAGE_POLICIES:
        _fail("small_image_policy", cfg.small_image_policy, f"one of {SMALL_IMAGE_POLICIES}")
    _check_positive(_fail, "batch_size", cfg.batch_size, integer=True)
    if cfg.batch_size % process_count:
        _fail("batch_size", cfg.batch_size, f"a multiple of the process count {process_count}")
    if not isinstance(cfg.seed, int):
        _fail("seed", cfg.seed, "an integer")
    if cfg.label_set not in LABEL_SETS:
        _fail("label_set", cfg.label_set, f"one of {LABEL_SETS}")
    if (not isinstance(cfg.tasks, (tuple, list)) or not cfg.tasks or len(set(cfg.tasks)) != len(cfg.tasks)
            or any(t not in TASKS for t in cfg.tasks)):
        _fail("tasks", cfg.tasks, f"a non-empty tuple of distinct task names from {TASKS}")
    if not (isinstance(cfg.num_parallel_calls, int) and (cfg.num_parallel_calls == -1 or cfg.num_parallel_calls > 0)):
        _fail("num_parallel_calls", cfg.num_parallel_calls, "an integer > 0, or -1 for tf.data AUTOTUNE")
    _check_positive(_fail, "prefetch_batches", cfg.prefetch_batches, integer=True, allow_zero=True)

    mb = cfg.motion_blur
    _check_range(_fail, "motion_blur.beta_range", mb.beta_range, 0.0, 1.0)
    _check_positive(_fail, "motion_blur.max_length_at_256", mb.max_length_at_256)
    if mb.angle_mode not in MOTION_ANGLE_MODES:
        _fail("motion_blur.angle_mode", mb.angle_mode, f"one of {MOTION_ANGLE_MODES}")
    if not 0.0 <= mb.paired_beta <= 1.0:
        _fail("motion_blur.paired_beta", mb.paired_beta, "a number in [0, 1]")

    fg = cfg.film_grain
    if (not isinstance(fg.radii, (tuple, list)) or not fg.radii
            or not all(isinstance(r, (int, float)) and 0.0 < r <= 0.1 for r in fg.radii)):
        _fail("film_grain.radii", fg.radii, "a non-empty tuple of radii in (0, 0.1] input pixels")
    _check_positive(_fail, "film_grain.filter_sigma", fg.filter_sigma)
    _check_positive(_fail, "film_grain.monte_carlo_samples", fg.monte_carlo_samples, integer=True, allow_zero=True)

    sh = cfg.sharpen
    _check_range(_fail, "sharpen.amount_range", sh.amount_range, 0.0, 10.0)
    _check_range(_fail, "sharpen.threshold_range", sh.threshold_range, 0.0, 1.0)
    _check_positive(_fail, "sharpen.blur_sigma", sh.blur_sigma)

    ip = cfg.inpainting
    _check_positive(_fail, "inpainting.min_vertices", ip.min_vertices, integer=True)
    if not (isinstance(ip.max_vertices, int) and ip.min_vertices <= ip.max_vertices <= 32):
        _fail("inpainting.max_vertices", ip.max_vertices, f"an integer in [min_vertices={ip.min_vertices}, 32]")
    _check_positive(_fail, "inpainting.min_width_at_256", ip.min_width_at_256)
    if not ip.min_width_at_256 <= ip.max_width_at_256:
        _fail("inpainting.max_width_at_256", ip.max_width_at_256, f">= min_width_at_256={ip.min_width_at_256}")
    if not (isinstance(ip.max_strokes, int) and 1 <= ip.max_strokes <= 8):
        _fail("inpainting.max_strokes", ip.max_strokes, "an integer in [1, 8]")
    if not 0.0 <= ip.box_probability <= 1.0:
        _fail("inpainting.box_probability", ip.box_probability, "a probability in [0, 1]")

    _check_positive(_fail, "eval.size", cfg.eval.size, integer=True)
    if not isinstance(cfg.eval.seed, int):
        _fail("eval.seed", cfg.eval.seed, "an integer")
    return list(problems)


def validate_data_config(cfg: ml_collections.ConfigDict, *, process_count: int = 1) -> None:
    """Raises one ValueError listing every invalid data knob (key, value, what is allowed)."""
    problems = data_problems(cfg, process_count=process_count)
    if problems:
        raise ValueError("Invalid data config:\n  " + "\n  ".join(problems))
