"""Scoring a folder of predictions against a folder of targets, image by image and as a set.

Images are read as RGB in [0, 1] (data range 1); pixel metrics, LPIPS and CLIP image-embedding similarity give
one row per matched pair, KID and FID one number for the whole set from Inception pool3 features (or, as
Diff-Plugin reports them, from CLIP image embeddings: `set_features="clip"`). Files that
cannot be scored (unmatched, unreadable, sizes that differ, too small for a metric) are listed as problems;
they never stop the run.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval import distribution, metrics
from eval.embedding import cosine_similarity
from eval.folders import Problem, pair_folders, read_rgb
from eval.lpips import load_lpips
from eval.nets.frozen import jit_inference
from eval.nets.inception import load_inception
from eval.nets.torchvision_trunks import TRUNKS
from eval.streaming import FeatureBank, MetricTable

PIXEL_METRICS = ("l1", "mse", "rmse", "psnr", "ssim")
SET_METRICS = ("kid", "fid")
EMBEDDING_METRICS = ("clip",)  # cosine similarity of CLIP image embeddings
METRICS = PIXEL_METRICS + ("lpips",) + EMBEDDING_METRICS + SET_METRICS
SET_FEATURES = ("inception", "clip")
DATA_RANGE = 1.0  # images are read into [0, 1]


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
    metrics: tuple[str, ...]
    weights_dir: str | None = None
    clip_dir: str | None = None  # a transformers CLIP folder: the "clip" metric, set_features="clip"
    y_channel: bool = False  # PSNR / SSIM / MSE / RMSE on BT.601 luma
    lpips_backbone: str = "alex"
    set_features: str = "inception"  # the features KID and FID compare
    kid_subsets: int = distribution.KID_SUBSETS
    kid_subset_size: int = distribution.KID_SUBSET_SIZE

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics: {list(self.metrics)} has unknown {unknown}; allowed: {', '.join(METRICS)}")
        if self.set_features not in SET_FEATURES:
            raise ValueError(f"set_features: {self.set_features!r} is not one of {', '.join(SET_FEATURES)}")
        needs_weights = [m for m in self.metrics if m == "lpips" or (m in SET_METRICS and not self.set_clip)]
        if needs_weights and self.weights_dir is None:
            raise ValueError(f"metrics {needs_weights} need network weights: pass weights_dir (--weights DIR)")
        if self.uses_clip and self.clip_dir is None:
            raise ValueError("the clip metric and set_features='clip' need a transformers CLIP folder: pass "
                             "clip_dir (--clip DIR)")

    @property
    def set_clip(self) -> bool:
        """Whether KID / FID are asked for and compare CLIP embeddings."""
        return self.set_features == "clip" and any(m in SET_METRICS for m in self.metrics)

    @property
    def uses_clip(self) -> bool:
        return "clip" in self.metrics or self.set_clip


@functools.partial(jax.jit, static_argnames=("names", "y_channel"))
def _pixel_rows(pred: jax.Array, target: jax.Array, names: tuple[str, ...], y_channel: bool) -> dict[str, jax.Array]:
    """The selected pixel metrics of (1, H, W, 3) images in [0, 1]."""
    luma = dict(y_channel=y_channel, data_range=DATA_RANGE)
    compute: dict[str, Callable[[], jax.Array]] = {
        "l1": lambda: metrics.l1(pred, target),
        "mse": lambda: metrics.mse(pred, target, **luma),
        "rmse": lambda: metrics.rmse(pred, target, **luma),
        "psnr": lambda: metrics.psnr(pred, target, DATA_RANGE, y_channel=y_channel),
        "ssim": lambda: metrics.ssim(pred, target, DATA_RANGE, y_channel=y_channel),
    }
    return {name: compute[name]() for name in names}


def _to_signed(image: np.ndarray) -> jax.Array:
    """(H, W, 3) in [0, 1] -> (1, H, W, 3) in [-1, 1], the feature networks' input convention."""
    return jnp.asarray(image[None] * 2.0 - 1.0)


def _jitted_clip_embeddings(clip_dir: str) -> Callable[[jax.Array], jax.Array]:
    """(B, H, W, 3) in [-1, 1] -> (B, D) CLIP image embeddings, jitted; CLIP's code loads only when needed."""
    from eval.clip_features import clip_image_embeddings, load_clip_image_encoder

    graphdef, state = nnx.split(load_clip_image_encoder(clip_dir))
    embed = jax.jit(lambda state, images: clip_image_embeddings(nnx.merge(graphdef, state), images))
    return lambda images: embed(state, images)


def score_folders(pred_dir: str, target_dir: str, options: ScoringOptions) -> dict:
    """Scores matched image pairs; returns {pred_dir, target_dir, settings, count, means, set_metrics, rows,
    problems}. Missing weights raise before any image is read; file problems are collected, not raised."""
    chosen = options.metrics
    lpips_fn = jit_inference(load_lpips(options.weights_dir, options.lpips_backbone)) if "lpips" in chosen else None
    clip_fn = _jitted_clip_embeddings(options.clip_dir) if options.uses_clip else None
    set_feature_fn = None
    if any(m in chosen for m in SET_METRICS):
        set_feature_fn = clip_fn if options.set_clip else jit_inference(load_inception(options.weights_dir))
    pixel_names = tuple(m for m in chosen if m in PIXEL_METRICS)
    min_sizes = {m: size for m, size in (("ssim", metrics.SSIM_WINDOW),
                                         ("lpips", TRUNKS[options.lpips_backbone].min_input_size)) if m in chosen}

    pairing = pair_folders(pred_dir, target_dir)
    problems: list[Problem] = list(pairing.problems)
    table = MetricTable()
    pred_features, target_features = FeatureBank(), FeatureBank()
    for name, pred_path, target_path in pairing.pairs:
        pred, target = read_rgb(pred_path), read_rgb(target_path)
        unreadable = [image for image in (pred, target) if isinstance(image, Problem)]
        if unreadable:
            problems += unreadable
            continue
        if pred.shape != target.shape:
            problems.append(Problem(pred_path, f"size {pred.shape[:2]} differs from the target's {target.shape[:2]}"))
            continue
        too_small = [f"{m} needs {size}x{size}" for m, size in min_sizes.items() if min(pred.shape[:2]) < size]
        if too_small:
            problems.append(Problem(pred_path, f"too small ({pred.shape[0]}x{pred.shape[1]}): {', '.join(too_small)}"))
            continue
        row = dict(_pixel_rows(pred[None], target[None], pixel_names, options.y_channel)) if pixel_names else {}
        signed_pred, signed_target = _to_signed(pred), _to_signed(target)
        if lpips_fn is not None:
            row["lpips"] = lpips_fn(signed_pred, signed_target)
        if "clip" in chosen:
            row["clip"] = cosine_similarity(clip_fn(signed_pred), clip_fn(signed_target))
        table.add([name], row)
        if set_feature_fn is not None:
            pred_features.add(np.asarray(set_feature_fn(signed_pred)))
            target_features.add(np.asarray(set_feature_fn(signed_target)))

    return {
        "pred_dir": pred_dir, "target_dir": target_dir,
        "settings": {**dataclasses.asdict(options), "metrics": list(chosen), "data_range": DATA_RANGE},
        "count": len(table), "means": table.means(),
        "set_metrics": _set_metrics(chosen, pred_features, target_features, options, problems),
        "rows": [{"name": name, **row} for name, row in table.rows.items()],
        "problems": [dataclasses.asdict(p) for p in problems],
    }


def _set_metrics(chosen: Sequence[str], pred_features: FeatureBank, target_features: FeatureBank,
                 options: ScoringOptions, problems: list[Problem]) -> dict:
    out = {}
    if not any(m in chosen for m in SET_METRICS):
        return out
    if len(pred_features) < 2:
        problems.append(Problem("(set)", f"KID / FID need at least 2 scored pairs; got {len(pred_features)}"))
        return out
    a, b = pred_features.array(), target_features.array()
    if "kid" in chosen:
        mean, std = distribution.kid(a, b, subsets=options.kid_subsets, subset_size=options.kid_subset_size)
        out["kid"] = {"mean": mean, "std": std}
    if "fid" in chosen:
        out["fid"] = distribution.fid(a, b)
    return out
