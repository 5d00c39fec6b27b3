"""The frozen base a method builds on (`config.pretrained.root`): what it is, its validation, and the frozen
parts it gives a model (the rectifier's and the plugin's; METHODS.md §2-3).

A base is one of:

    an export of `configs/ldm.py` (`--mode=export`): its ldm.json names the autoencoder and the conditioning,
        unet/ the U-Net, null_context/ the context of an unconditional base;
    a diffusers DDPMPipeline directory (`PIXEL_BASE`): unet/ a UNet2DModel (called without context),
        scheduler/, and z = x (no autoencoder);
    a diffusers StableDiffusionPipeline directory (`SD_BASE`; model_index.json, unet/, vae/, text_encoder/,
        tokenizer/, scheduler/): SD's latent space.

A text-conditioned base (SD, or a text ldm export) runs with the empty caption's encoding E_text("") (1, 77,
768 for SD) as its fixed context, computed once from the frozen text encoder; nothing else of the text tower
is kept. `frozen_base_state` gives the values of the model paths `unet`, `autoencoder` (VAE bases) and
`null_context` (bases with a context).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff.interop.torch_io import CheckpointError, read_config
from editdiff.methods.base import FlatState
from editdiff.nn.patch_autoencoder import PatchAutoencoder
from editdiff.pretrained import pretrained_path

LDM_FILE = "ldm.json"
SCHEDULER_FILE = os.path.join("scheduler", "scheduler_config.json")
# config.diffusion keys that must equal the base's scheduler config: the schedule it was trained with.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                 "rescale_betas_zero_snr")
# A pixel-space base (a diffusers DDPMPipeline directory: unet/ a UNet2DModel, scheduler/) described as an ldm
# export describes itself: no autoencoder (pixel patches of 1), no context.
PIXEL_BASE = {"unet_class": "UNet2DModel", "autoencoder": {"kind": "patch", "factor": 1},
              "conditioning": "unconditional"}
# A Stable Diffusion pipeline directory (model_index.json; unet/ a UNet2DConditionModel, vae/, text_encoder/,
# tokenizer/, scheduler/), described the same way: SD's latent space, a text-conditioned U-Net.
SD_BASE = {"unet_class": "UNet2DConditionModel", "autoencoder": {"kind": "vae", "subfolder": "vae"},
           "conditioning": "text"}
PIPELINE_INDEX = "model_index.json"


def read_base(root: str) -> dict[str, Any]:
    """The base's description: its ldm.json (an export of configs/ldm.py, unconditional or text-conditioned),
    PIXEL_BASE for a DDPMPipeline directory (the paper's pixel DDPM backbones: unet/ a diffusers UNet2DModel,
    scheduler/), SD_BASE for a Stable Diffusion pipeline directory (model_index.json, unet/ a
    UNet2DConditionModel). CheckpointError otherwise."""
    path = os.path.join(root, LDM_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    unet_directory = os.path.join(root, "unet")
    unet_class = (read_config(unet_directory).get("_class_name")
                  if os.path.isfile(os.path.join(unet_directory, "config.json")) else None)
    if unet_class == "UNet2DModel":
        return dict(PIXEL_BASE)
    if unet_class == "UNet2DConditionModel" and os.path.isfile(os.path.join(root, PIPELINE_INDEX)):
        return dict(SD_BASE)
    raise CheckpointError(f"{root}: no {LDM_FILE}, no UNet2DModel in unet/ and no Stable Diffusion pipeline "
                          f"({PIPELINE_INDEX} with a UNet2DConditionModel in unet/); config.pretrained.root must "
                          "be a `configs/ldm.py` export (python main.py --config configs/ldm.py --workdir W "
                          "--mode=export writes W/export), a diffusers DDPMPipeline directory (unet/ a "
                          "UNet2DModel, scheduler/) or a StableDiffusionPipeline directory")


def is_text_base(base: dict[str, Any]) -> bool:
    """A text-conditioned base: its context is the empty caption's encoding (`null_context`)."""
    return base.get("conditioning") == "text"


def base_parts(base: dict[str, Any]) -> tuple[str, ...]:
    """The pretrained parts the base needs."""
    return ("unet",) + (("vae",) if base["autoencoder"]["kind"] == "vae" else ()) + (
        ("text_encoder", "tokenizer") if is_text_base(base) else ())


def null_context_shape(config: ml_collections.ConfigDict, base: dict[str, Any]) -> tuple[int, ...]:
    """(1, tokens, cross_attention_dim) of the base's context, without reading weights: the header of an
    unconditional export's null-context file, or the text encoder's (max_position_embeddings, hidden_size)."""
    if is_text_base(base):
        from editdiff.methods.ldm import text_encoder_config

        text = text_encoder_config(pretrained_path(config, "text_encoder"))
        return (1, text.max_position_embeddings, text.hidden_size)
    from safetensors import safe_open

    with safe_open(os.path.join(config.pretrained.root, base["files"]["null_context"]), "np") as f:
        return tuple(f.get_slice("null_context").get_shape())


def is_pixel_base(base: dict[str, Any]) -> bool:
    return base.get("unet_class") == "UNet2DModel"


def base_rule(config, *, pixel: bool = True) -> list[str]:
    """The base directory exists, is an ldm export, a DDPMPipeline (when `pixel`) or a StableDiffusionPipeline
    directory with the parts it needs, and config.diffusion is its schedule."""
    root = config.pretrained.root
    kinds = ("the export directory of a configs/ldm.py run, " + ("a diffusers DDPMPipeline directory " if pixel else "")
             + "or a StableDiffusionPipeline directory")
    if not root:
        return [f"config.pretrained.root = '' is invalid; allowed: {kinds}"]
    try:
        base = read_base(root)
    except CheckpointError as error:
        return [f"config.pretrained.root: {error}"]
    if is_pixel_base(base) and not pixel:
        return [f"config.pretrained.root = {root!r} is invalid here; allowed: {kinds} (a pixel-space UNet2DModel "
                "has no cross-attention for this method's context)"]
    missing = [part for part in base_parts(base) if not pretrained_path(config, part)]
    if missing:
        return [f"config.pretrained.{part} = '' is invalid here; allowed: a directory (or {root}/{part}/), which "
                f"this {base['conditioning']} base with a {base['autoencoder']['kind']} autoencoder needs"
                for part in missing]
    scheduler = os.path.join(root, SCHEDULER_FILE)
    if not os.path.isfile(scheduler):
        return [f"config.pretrained.root: {scheduler} is missing (the base's training schedule)"]
    with open(scheduler) as f:
        saved = json.load(f)
    return [f"config.diffusion.{key} = {config.diffusion[key]!r} is invalid; allowed: the base's {saved[key]!r} "
            f"({scheduler})" for key in SCHEDULE_KEYS
            if key in saved and config.diffusion[key] != saved[key]
            and not (isinstance(saved[key], float) and np.isclose(config.diffusion[key], saved[key]))]




def autoencoder_factor(config: ml_collections.ConfigDict, base: dict[str, Any]) -> int:
    """The base autoencoder's downsampling factor, from its config (no weights read)."""
    autoencoder = base["autoencoder"]
    if autoencoder["kind"] == "patch":
        return autoencoder["factor"]
    from editdiff.nn.vae import VAEConfig

    return VAEConfig.from_diffusers(read_config(pretrained_path(config, "vae"))).downsample_factor


def build_autoencoder(config: ml_collections.ConfigDict, base: dict[str, Any], *, rngs: nnx.Rngs,
                      dtype: Any = jnp.float32) -> nnx.Module:
    """The base's autoencoder with initial values (a VAE's come from `frozen_base_state`)."""
    autoencoder = base["autoencoder"]
    if autoencoder["kind"] == "patch":
        return PatchAutoencoder(autoencoder["factor"])
    from editdiff.nn.vae import AutoencoderKL, VAEConfig

    return AutoencoderKL(VAEConfig.from_diffusers(read_config(pretrained_path(config, "vae"))), rngs=rngs,
                         dtype=dtype)


def frozen_base_state(config: ml_collections.ConfigDict, base: dict[str, Any]) -> FlatState:
    """The base's values by model path: ("unet", ...), ("autoencoder", ...) for a VAE base, ("null_context",)
    for a base with a context (the empty caption's encoding for a text base, the export's null context for an
    unconditional ldm export)."""
    from editdiff.interop.diffusers_unet import load_unet, load_unet2d
    from editdiff.methods.ldm import empty_caption_context, load_null_context

    unet = (load_unet2d if is_pixel_base(base) else load_unet)(pretrained_path(config, "unet"))
    state = {("unet", *p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))}
    if is_text_base(base):
        state[("null_context",)] = empty_caption_context(pretrained_path(config, "text_encoder"),
                                                         pretrained_path(config, "tokenizer"))
    elif not is_pixel_base(base):
        state[("null_context",)] = load_null_context(config.pretrained.root)
    if base["autoencoder"]["kind"] == "vae":
        from editdiff.interop.diffusers_vae import load_vae

        vae = load_vae(pretrained_path(config, "vae"))
        state.update({("autoencoder", *p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(vae, nnx.Param))})
    return state


def broadcast_context(null_context: nnx.Param, batch_size: int) -> jax.Array:
    """The base's fixed context (1, L, D) repeated over a batch: (B, L, D)."""
    null = null_context[...]
    return jnp.broadcast_to(null, (batch_size, *null.shape[1:]))
