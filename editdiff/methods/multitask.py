"""Multi-task image-to-image diffusion with fine-grained control (seed 000; METHODS.md §1).

The model, in the paper's notation (images in [-1, 1], NHWC):

    z_0^A = s * E(I_A)                       source latent (I_A already multiplied by the mask M if inpainting)
    z_0^B = s * E(I_B)                       target latent, the one that is noised and denoised
    I_ref^down = resize(I_ref, latent size)  RGB colour reference (zeros when colour transfer is off)
    C = [beta, sigma, lambda, mu, e1..e5]    editing vector (labels dropped in the "no_labels" ablation)
    eps_theta(z_t^B, t | z_0^A, I_ref, C) = UNet(concat(z_t^B, z_0^A, I_ref^down), t, context = f_theta(C))
    loss = || eps_theta(...) - eps ||_p      p = 1 in the paper (config.diffusion.loss)

Palette++ (config.model.conditioning = "concat") replaces the cross-attention path by C broadcast over the
latent grid and concatenated to the U-Net input; its U-Net has no cross-attention blocks.

Batch fields (from `input_pipeline`): `source`, `target`, `reference` (B, H, W, 3) in [-1, 1], `mask`
(B, H, W, 1), `edit_vector` (B, 9).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.config import (diffusers_scheduler_config, diffusion_section, loss_settings,
                                       sampler_section, sampler_settings)
from editdiff.diffusion.losses import diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample
from editdiff.diffusion.schedules import schedule_from_config
from editdiff.heads.mapping import MappingNetwork
from editdiff.methods import latents as latents_lib
from editdiff.methods import multitask_edit
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.reports import ModelFunction, labelled_grid, write_grid, write_scores
from editdiff.nn.patch_autoencoder import PatchAutoencoder
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.pretrained import pretrained_path, pretrained_section
from eval import grain as grain_metrics
from eval import metrics as pixel_metrics
from input_pipeline.config import data_problems, default_data_config

EDIT_VECTOR_NAMES = ("beta", "sigma", "lambda", "mu", "e_blur", "e_grain", "e_colour", "e_inpaint", "e_sharpen")
EDIT_VECTOR_SIZE = len(EDIT_VECTOR_NAMES)  # C = [beta, sigma, lambda, mu, e1..e5]
NUM_STRENGTHS = 4  # the scalars before the binary task labels
INPAINT_ONLY = np.array([0.0, 0.0, 0.0, 1.0, 0.0], np.float32)  # task labels [blur, grain, colour, inpaint, sharpen]
AUTOENCODERS = ("patch", "vae")
CONDITIONINGS = ("cross_attention", "concat")
# config.model.standardise: the per-example frame of the diffused latent (MultitaskModel.frame)
STANDARDISATIONS = ("none", "source", "colour_reference")
COLOUR_LABEL = EDIT_VECTOR_NAMES.index("e_colour")

_MODEL_CHECKS = {
    "autoencoder": checks.one_of(AUTOENCODERS),
    "patch_factor": checks.int_at_least(1),
    "conditioning": checks.one_of(CONDITIONINGS),
    "use_task_labels": checks.BOOLEAN,
    "normalise_strengths": checks.BOOLEAN,
    "mask_channel": checks.BOOLEAN,
    "residual": checks.BOOLEAN,
    "residual_scale": checks.number_above(0),
    "source_skip": checks.BOOLEAN,
    "standardise": checks.one_of(STANDARDISATIONS),
    "standardise_min_std": checks.number_above(0),
    "edit_embedding": checks.BOOLEAN,
    "mapping": checks.ANY,
    "unet": checks.ANY,
}
_MAPPING_CHECKS = {"depth": checks.int_at_least(1), "hidden_dim": checks.int_at_least(1),
                   "num_tokens": checks.int_at_least(1)}
# config.model.unet: diffusers UNet2DConditionModel config keys; the channels in and out are derived.
# Derived, not set: the channel counts, and the class embedding (config.model.edit_embedding).
_DERIVED_UNET_KEYS = ("in_channels", "out_channels", "class_embed_type", "projection_class_embeddings_input_dim")
_UNET_KEYS = tuple(f.name for f in dataclasses.fields(UNetConfig) if f.name not in _DERIVED_UNET_KEYS)
EVALUATOR_KINDS = ("edit_grid", "edit_tables")


def _unet_rule(config: ml_collections.ConfigDict) -> list[str]:
    """An explicit config.model.unet must make a valid UNetConfig (empty: read from the pretrained U-Net)."""
    if not config.model.unet:
        return []
    try:
        UNetConfig(**config.model.unet.to_dict(), in_channels=4, out_channels=4)
    except (TypeError, ValueError) as error:
        return [f"config.model.unet is invalid: {error}"]
    return []


def _model_rules(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    if config.model.autoencoder == "vae" and not pretrained_path(config, "vae"):
        problems.append("config.model.autoencoder = 'vae' needs config.pretrained.vae (or config.pretrained.root "
                        "with a vae/ subfolder)")
    if not config.model.unet and not pretrained_path(config, "unet"):
        problems.append("config.model.unet = {} (read the pretrained U-Net) needs config.pretrained.unet (or "
                        "config.pretrained.root with a unet/ subfolder)")
    if config.model.source_skip and config.diffusion.prediction_type != "sample":
        problems.append(f"config.model.source_skip = True needs config.diffusion.prediction_type = 'sample' (the "
                        f"U-Net's output is added to z_A as an x_0 estimate); it is "
                        f"{config.diffusion.prediction_type!r}")
    if config.model.source_skip and config.model.residual:
        problems.append("config.model.source_skip and config.model.residual are exclusive: the residual "
                        "formulation already diffuses z_B - z_A; set one of them to False")
    if config.model.standardise != "none" and config.model.residual:
        problems.append("config.model.standardise and config.model.residual are exclusive: each is a frame for "
                        "the diffused latent ((z_B - mu_A) / s_A or k (z_B - z_A)); set one of them to False")
    factor = config.model.patch_factor
    if config.model.autoencoder == "vae" and pretrained_path(config, "vae"):
        factor = _vae_config(config).downsample_factor
    if isinstance(config.data.crop_size, int) and config.data.crop_size % factor:
        problems.append(f"config.data.crop_size = {config.data.crop_size} is invalid; allowed: a multiple of "
                        f"the autoencoder's downsampling factor {factor}")
    return problems


def _vae_config(config: ml_collections.ConfigDict):
    from editdiff.interop.torch_io import read_config
    from editdiff.nn.vae import VAEConfig

    return VAEConfig.from_diffusers(read_config(pretrained_path(config, "vae")))


def strength_scales(data: ml_collections.ConfigDict) -> tuple[float, float, float, float]:
    """The divisors of beta, sigma, lambda, mu with config.model.normalise_strengths: the upper ends of their
    configured ranges (config.data), 1 where a range is [0, 0] (the strength is then always 0)."""
    highs = (data.motion_blur.beta_range[1], max(data.film_grain.radii), data.sharpen.amount_range[1],
             data.sharpen.threshold_range[1])
    return tuple(float(high) if high > 0 else 1.0 for high in highs)


def scaled_edit_vector(edit_vector: jax.Array, scales: tuple[float, ...] | None) -> jax.Array:
    """C (B, 9) float32 with its four strengths divided by `scales` (`strength_scales`; None: unchanged)."""
    edit = edit_vector.astype(jnp.float32)
    if scales is None:
        return edit
    return edit.at[:, :NUM_STRENGTHS].divide(jnp.asarray(scales, jnp.float32))


def channel_statistics(images: jax.Array, min_std: float) -> tuple[jax.Array, jax.Array]:
    """The mean and standard deviation of (B, H, W, C) per example and channel over H, W, the deviation floored
    at `min_std` (a flat channel would otherwise blow up what is divided by it). Each (B, 1, 1, C)."""
    mean = jnp.mean(images, axis=(1, 2), keepdims=True)
    return mean, jnp.maximum(jnp.std(images, axis=(1, 2), keepdims=True), min_std)


def standardised(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """(x - mean) / std, broadcast: (B, H, W, C) with statistics broadcastable to it."""
    return (x - mean) / std


def _write_json(path: str, content: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


class EditConditions(NamedTuple):
    """What a batch conditions the denoiser on (`MultitaskModel.conditions`)."""
    source_latent: jax.Array  # z_A (B, h, w, C)
    image: jax.Array  # concatenated to z_t, (B, h, w, c)
    context: jax.Array | None  # cross-attention context (B, tokens, dim); None for Palette++
    frame: tuple[jax.Array, jax.Array]  # (offset, scale) of the diffused latent (MultitaskModel.frame)
    class_labels: jax.Array | None  # C for the U-Net's class embedding (B, edit_dim), with `edit_embedding`


class MultitaskModel(latents_lib.LatentModel):
    """Autoencoder (frozen), denoising U-Net and mapping network f_theta (None for Palette++).

    Input choices beyond the paper (config.model; all off in `sd15`):
    `strength_scales` (4,) divides beta, sigma, lambda, mu by the upper ends of their configured ranges, so every
    scalar of C lies in [0, 1] (the raw ones span [0, 0.1] to [1, 3]); `mask_channel` appends the inpainting
    mask at the latent size (the kept fraction of each f x f cell, 1 = keep) to the image conditions;
    `residual` diffuses k (z_B - z_A) instead of z_B (k = `residual_scale`), so that the zero residual — doing
    nothing — is where the model starts, and the edit is z_A + the sampled residual / k; `source_skip` keeps
    diffusing z_B but lets the U-Net predict only x_0's departure from the source, x0_hat = z_A + UNet(...), so
    that the photo's levels come from z_A rather than from the U-Net's normalised features. Both of these
    two sampled "no change" at CPU budgets (benchmarks/RESULTS.md, issue 14 item 1). `standardise` diffuses z_B
    in a per-example frame instead (`frame`): (z_B - mu) / s with the source latent's per-channel mean and std
    ("source") or, where colour is transferred, the reference latent's ("colour_reference"), the U-Net reading
    z_A standardised by its own statistics and the colour reference relative to the source's; the target is a
    whole image, not a near-zero departure, but its levels and contrast are the frame's, which the U-Net's
    group-normalised output need not reproduce. `edit_embedding` also gives C to the U-Net's class embedding
    (added to the time embedding, so it reaches every ResNet — the finest level too, which has no
    cross-attention in the demo's U-Net — scaling and shifting its features with "scale_shift" ResNets).
    """

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel, mapping: MappingNetwork | None,
                 *, use_task_labels: bool, strength_scales: tuple[float, ...] | None = None,
                 mask_channel: bool = False, residual: bool = False, residual_scale: float = 1.0,
                 source_skip: bool = False, standardise: str = "none", standardise_min_std: float = 0.05,
                 edit_embedding: bool = False):
        self.autoencoder = autoencoder
        self.unet = unet
        self.mapping = mapping
        self.use_task_labels = use_task_labels
        self.strength_scales = strength_scales
        self.mask_channel = mask_channel
        self.residual = residual
        self.residual_scale = residual_scale
        self.source_skip = source_skip
        self.standardise = standardise
        self.standardise_min_std = standardise_min_std
        self.edit_embedding = edit_embedding

    def edit_input(self, edit_vector: jax.Array) -> jax.Array:
        """C as the model reads it (`scaled_edit_vector`), the task labels dropped in the no_labels ablation:
        (B, 9) -> (B, edit_dim)."""
        edit = scaled_edit_vector(edit_vector, self.strength_scales)
        return edit if self.use_task_labels else edit[:, :NUM_STRENGTHS]

    def conditions(self, batch: Batch) -> EditConditions:
        """Everything one batch conditions on, computed once (`EditConditions`): z_A; the image conditions
        concatenated to z_t (B, h, w, c) — z_A (standardised by its own statistics with a frame: the copy of
        the photo's content), the colour reference (relative to the source's levels with a frame), the mask
        (with `mask_channel`), C (Palette++); the cross-attention context (or None); the frame (`frame`); C as
        the class embedding's input (with `edit_embedding`, else None)."""
        source_latent = self.encode(batch["source"])
        b, h, w, _ = source_latent.shape
        reference = jax.image.resize(batch["reference"].astype(jnp.float32), (b, h, w, 3), "linear",
                                     antialias=True)
        source_view = source_latent
        if self.standardise != "none":
            source_view = standardised(source_latent, *channel_statistics(source_latent, self.standardise_min_std))
            reference = standardised(reference, *channel_statistics(batch["source"].astype(jnp.float32),
                                                                    self.standardise_min_std))
        edit = self.edit_input(batch["edit_vector"])
        concat = [source_view, reference]
        if self.mask_channel:
            f = self.autoencoder.downsample_factor
            mask = batch["mask"].astype(jnp.float32).reshape(b, h, f, w, f, 1)
            concat.append(jnp.mean(mask, axis=(2, 4)))
        context = None
        if self.mapping is None:  # Palette++: C expanded to the latent size
            concat.append(jnp.broadcast_to(edit[:, None, None, :], (b, h, w, edit.shape[-1])))
        else:
            context = self.mapping(edit)
        return EditConditions(source_latent, jnp.concatenate(concat, axis=-1), context,
                              self.frame(batch, source_latent), edit if self.edit_embedding else None)

    def frame(self, batch: Batch, source_latent: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(offset, scale), broadcastable to the latent (B, h, w, C): the model diffuses (z_B - offset) / scale
        and edits offset + scale x. `residual`: (z_A, 1 / k); `standardise` = "source": mu_A, s_A, the source
        latent's per-example, per-channel mean and std (`channel_statistics`), each (B, 1, 1, C);
        "colour_reference": the same, but the colour reference latent's mu_R, s_R for examples whose edit
        transfers colour (e_colour = 1: the edit's levels come from the reference); "none": (0, 1)."""
        if self.residual:
            return source_latent, jnp.asarray(1.0 / self.residual_scale, jnp.float32)
        if self.standardise == "none":
            return jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
        mean, std = channel_statistics(source_latent, self.standardise_min_std)
        if self.standardise == "colour_reference":
            colour = (batch["edit_vector"][:, COLOUR_LABEL] > 0.5)[:, None, None, None]
            reference_mean, reference_std = channel_statistics(self.encode(batch["reference"]),
                                                               self.standardise_min_std)
            mean, std = jnp.where(colour, reference_mean, mean), jnp.where(colour, reference_std, std)
        return mean, std

    @staticmethod
    def diffused_latent(latent: jax.Array, frame: tuple[jax.Array, jax.Array]) -> jax.Array:
        """The latent in the diffused frame (`frame`): (z - offset) / scale, (B, h, w, C) float32."""
        return standardised(latent, *frame)

    @staticmethod
    def edited_latent(diffused: jax.Array, frame: tuple[jax.Array, jax.Array]) -> jax.Array:
        """The inverse of `diffused_latent`: offset + scale x, (B, h, w, C) float32."""
        offset, scale = frame
        return offset + scale * diffused

    def start_latent(self, conditions: EditConditions) -> jax.Array:
        """The source as the sampler's clean start (config.sampler.source_strength < 1), (B, h, w, C) float32:
        with a standardised frame, z_A standardised by its own statistics (as the U-Net reads it; in the
        colour_reference frame of a colour transfer this is the source carried to the reference's per-channel
        latent statistics); otherwise z_A in the diffused frame, i.e. the untouched source."""
        if self.standardise != "none":
            return conditions.image[..., :self.autoencoder.latent_channels]
        return self.diffused_latent(conditions.source_latent, conditions.frame)

    def denoise(self, noisy_latent: jax.Array, t: jax.Array, conditions: EditConditions) -> jax.Array:
        """eps_theta(z_t, t | conditions): the U-Net on concat(z_t, image conditions) with the context (and C
        in its class embedding with `edit_embedding`), float32 (B, h, w, C); with `source_skip` the x_0
        estimate z_A (as the image conditions carry it) + UNet(...)."""
        unet_input = jnp.concatenate([noisy_latent, conditions.image], axis=-1)
        prediction = self.unet(unet_input, t, conditions.context,
                               class_labels=conditions.class_labels).astype(jnp.float32)
        if self.source_skip:
            prediction = prediction + conditions.image[..., :self.autoencoder.latent_channels]
        return prediction


def _flat_params(module: nnx.Module, prefix: tuple) -> dict[tuple, np.ndarray]:
    return {prefix + path: np.asarray(variable[...]) for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param))}


class MultitaskMethod(Method):
    """Builds `MultitaskModel`, trains the U-Net and f_theta with the L1/L2 noise loss, samples with the
    configured sampler."""

    evaluator_kinds = EVALUATOR_KINDS

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.schedule = schedule_from_config(config.diffusion)
        self.dtype = jnp.dtype(config.compute_dtype)
        self.edit_dim = EDIT_VECTOR_SIZE if config.model.use_task_labels else NUM_STRENGTHS
        self._edit_sampler: ModelFunction | None = None

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        """model (with model.mapping and model.unet), diffusion, sampler, data and pretrained; cross-key rules
        last."""
        return [
            checks.Section("model", _MODEL_CHECKS),
            checks.Section("model.mapping", _MAPPING_CHECKS),
            checks.Section("model.unet", {key: checks.ANY for key in _UNET_KEYS}, rules=(_unet_rule,),
                           optional=_UNET_KEYS),
            diffusion_section(),
            # source_strength: the start, the source re-noised (MultitaskModel.start_latent; 1 = pure noise, the paper's)
            sampler_section(start_strength="source_strength"),
            *checks.closed_like("data", default_data_config(), rules=(lambda c: data_problems(c.data),)),
            pretrained_section(),
            multitask_edit.edit_section(),
            checks.Section("", {}, closed=False, rules=(_model_rules,)),
        ]

    def _autoencoder(self) -> nnx.Module:
        if self.config.model.autoencoder == "patch":
            return PatchAutoencoder(self.config.model.patch_factor)
        from editdiff.nn.vae import AutoencoderKL

        return AutoencoderKL(_vae_config(self.config), rngs=nnx.Rngs(0), dtype=self.dtype)

    def _unet_config(self, latent_channels: int) -> UNetConfig:
        model_config = self.config.model
        concat = model_config.conditioning == "concat"
        in_channels = (2 * latent_channels + 3 + int(model_config.mask_channel)
                       + (self.edit_dim if concat else 0))
        if not model_config.unet:  # the pretrained U-Net's architecture, conv_in widened (pretrained_state)
            from editdiff.interop.torch_io import read_config

            unet_config = UNetConfig.from_diffusers(read_config(pretrained_path(self.config, "unet")))
            if concat and unet_config.has_cross_attention:
                raise ValueError("config.model.conditioning = 'concat' (Palette++) needs a U-Net without "
                                 "cross-attention; the pretrained U-Net has cross-attention blocks")
            if unet_config.class_embed_type is not None:
                raise ValueError(f"the pretrained U-Net has class_embed_type={unet_config.class_embed_type!r}; "
                                 f"the multitask model gives the class embedding only C (config.model."
                                 f"edit_embedding) and needs a pretrained U-Net without one")
            return dataclasses.replace(unet_config, in_channels=in_channels, **self._class_embedding_fields())
        fields = model_config.unet.to_dict() | self._class_embedding_fields()
        if concat:
            fields["down_block_types"] = tuple("DownBlock2D" for _ in fields["down_block_types"])
            fields["up_block_types"] = tuple("UpBlock2D" for _ in fields["up_block_types"])
            fields["mid_block_type"] = "UNetMidBlock2D"
        return UNetConfig(**fields, in_channels=in_channels, out_channels=latent_channels)

    def _class_embedding_fields(self) -> dict:
        """The U-Net's class embedding: C (edit_dim) in with config.model.edit_embedding, none otherwise."""
        if not self.config.model.edit_embedding:
            return {}
        return dict(class_embed_type="projection", projection_class_embeddings_input_dim=self.edit_dim)

    def init_model(self, rngs: nnx.Rngs) -> MultitaskModel:
        model_config = self.config.model
        autoencoder = self._autoencoder()
        unet = UNet2DConditionModel(self._unet_config(autoencoder.latent_channels), rngs=rngs, dtype=self.dtype)
        mapping = None
        if model_config.conditioning == "cross_attention":
            mapping = MappingNetwork(self.edit_dim, unet.config.cross_attention_dim,
                                     depth=model_config.mapping.depth, hidden_dim=model_config.mapping.hidden_dim,
                                     num_tokens=model_config.mapping.num_tokens, rngs=rngs, dtype=self.dtype)
        scales = strength_scales(self.config.data) if model_config.normalise_strengths else None
        return MultitaskModel(autoencoder, unet, mapping, use_task_labels=model_config.use_task_labels,
                              strength_scales=scales, mask_channel=model_config.mask_channel,
                              residual=model_config.residual, residual_scale=model_config.residual_scale,
                              source_skip=model_config.source_skip, standardise=model_config.standardise,
                              standardise_min_std=model_config.standardise_min_std,
                              edit_embedding=model_config.edit_embedding)

    def pretrained_state(self) -> FlatState:
        """The SD VAE (frozen) and U-Net (fine-tuned) from config.pretrained. The U-Net's conv_in gets zero
        weights for its new input channels (source latent, colour reference), so at initialisation the
        concatenated conditions change nothing, as InstructPix2Pix does; for the same reason a new class
        embedding (config.model.edit_embedding) starts with a zero output layer."""
        values = {}
        if self.config.model.autoencoder == "vae":
            from editdiff.interop.diffusers_vae import load_vae  # torch-free unless a .bin is read

            values.update(_flat_params(load_vae(pretrained_path(self.config, "vae")), ("autoencoder",)))
        if not self.config.model.unet:
            from editdiff.interop.diffusers_unet import load_unet

            unet = _flat_params(load_unet(pretrained_path(self.config, "unet")), ("unet",))
            kernel = unet[("unet", "conv_in", "kernel")]  # (kh, kw, in, out)
            in_channels = self._unet_config(self._latent_channels()).in_channels
            unet[("unet", "conv_in", "kernel")] = np.pad(
                kernel, ((0, 0), (0, 0), (0, in_channels - kernel.shape[2]), (0, 0)))
            if self.config.model.edit_embedding:
                time_dim = unet[("unet", "time_embedding", "linear_2", "bias")].shape[0]
                unet[("unet", "class_embedding", "linear_2", "kernel")] = np.zeros((time_dim, time_dim), np.float32)
                unet[("unet", "class_embedding", "linear_2", "bias")] = np.zeros((time_dim,), np.float32)
            values.update(unet)
        return values

    def _latent_channels(self) -> int:
        if self.config.model.autoencoder == "patch":
            return PatchAutoencoder(self.config.model.patch_factor).latent_channels
        return _vae_config(self.config).latent_channels

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        import input_pipeline

        return input_pipeline.create_train_iterator(self.config.data, start_step=start_step,
                                                    process_index=process_index, process_count=process_count)

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("unet"), nnx.PathContains("mapping")))

    def loss(self, model: MultitaskModel, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        t_key, noise_key = jax.random.split(rng)
        conditions = model.conditions(batch)
        target_latent = model.diffused_latent(model.encode(batch["target"]), conditions.frame)
        t = sample_timesteps(t_key, target_latent.shape[0], self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, target_latent.shape, jnp.float32)
        noisy = q_sample(self.schedule, target_latent, t, noise)
        prediction = model.denoise(noisy, t, conditions)
        loss = diffusion_loss(self.schedule, prediction, target_latent, noise, t,
                              **loss_settings(self.config.diffusion))
        return loss, {"loss": loss}

    def sample(self, model: MultitaskModel, batch: Batch, rng: jax.Array) -> jax.Array:
        conditions = model.conditions(batch)
        b, h, w, _ = conditions.image.shape
        start_key, step_key = jax.random.split(rng)
        x_T = jax.random.normal(start_key, (b, h, w, model.autoencoder.latent_channels), jnp.float32)

        def model_fn(z, t):
            return model.denoise(z, t, conditions)

        s = self.config.sampler
        settings = sampler_settings(s)
        if s.source_strength < 1.0:  # SDEdit from the source: its low frequencies are the target's for most edits
            settings |= dict(init_latent=model.start_latent(conditions), strength=s.source_strength)
        if s.blend_known_region:  # outside the hole the diffused latent is known: that of z_B = z_A
            settings |= dict(known_latent=model.diffused_latent(conditions.source_latent, conditions.frame),
                             known_mask=self._known_latent_mask(model, batch))
        latents = samplers.sampler_by_name(s.name)(model_fn, self.schedule, x_T, step_key, **settings)
        return model.decode(model.edited_latent(latents, conditions.frame))

    @staticmethod
    def _known_latent_mask(model: MultitaskModel, batch: Batch) -> jax.Array:
        """(B, h, w, 1): 1 where the target latent is known to equal the source latent — outside the hole when
        inpainting is the only edit (a latent cell counts only if its whole f x f pixel patch is kept); 0
        everywhere for any other edit, which changes every pixel."""
        f = model.autoencoder.downsample_factor
        cells = jax.lax.reduce_window(batch["mask"].astype(jnp.float32), jnp.inf, jax.lax.min,
                                      (1, f, f, 1), (1, f, f, 1), "VALID")
        inpainting_only = jnp.all(batch["task_labels"] == INPAINT_ONLY, axis=-1).astype(jnp.float32)
        return cells * inpainting_only[:, None, None, None]

    def eval_sets(self) -> dict[str, dict[str, np.ndarray]]:
        """The fixed evaluation batches by set name (5 single tasks, the paper's 4 combinations)."""
        import input_pipeline

        return input_pipeline.create_eval_sets(self.config.data)

    def evaluators(self) -> list[Evaluator]:
        """`edit_grid` and `edit_tables` entries of config.evals, sharing one sampling pass per step."""
        edits = _EditedEvalSets(self, self.eval_sets(), seed=self.config.seed)
        kinds = {"edit_grid": EditGrid, "edit_tables": EditTables}
        return [kinds[entry.kind](name, entry.every, edits) for name, entry in self.config.evals.items()]

    def edit(self, model: MultitaskModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """config.edit's edit of `image` (H, W, 3) at its own resolution (`multitask_edit`)."""
        if self._edit_sampler is None:
            self._edit_sampler = ModelFunction(self.sample)
        unet = model.unet.config
        multiple = model.autoencoder.downsample_factor * 2 ** (len(unet.block_out_channels) - 1)
        return multitask_edit.edit_photo(self._edit_sampler, model, image, self.config.edit, self.config.data, multiple)

    def export(self, model: MultitaskModel, directory: str) -> list[str]:
        """`unet/` (diffusers UNet2DConditionModel), `vae/` (AutoencoderKL, when pretrained), `mapping/`
        (f_theta, see `editdiff.interop.mapping_network`), `scheduler/` (DDIMScheduler config) and
        `multitask.json`: how the U-Net input is assembled, so a PyTorch user can rebuild eps_theta."""
        from editdiff.interop.diffusers_unet import export_unet
        from editdiff.interop.mapping_network import export_mapping_network

        written = [os.path.join(directory, "unet")]
        export_unet(model.unet, written[-1])
        if isinstance(model.autoencoder, PatchAutoencoder):
            autoencoder = {"kind": "patch", "factor": model.autoencoder.factor}
        else:
            from editdiff.interop.diffusers_vae import export_vae

            written.append(os.path.join(directory, "vae"))
            export_vae(model.autoencoder, written[-1])
            autoencoder = {"kind": "vae", "subfolder": "vae"}
        if model.mapping is not None:
            written.append(os.path.join(directory, "mapping"))
            export_mapping_network(model.mapping, written[-1])
        written.append(os.path.join(directory, "scheduler", "scheduler_config.json"))
        _write_json(written[-1], diffusers_scheduler_config(self.config.diffusion, self.config.sampler))
        written.append(os.path.join(directory, "multitask.json"))
        _write_json(written[-1], {
            "method": "multitask",
            "autoencoder": autoencoder,
            "scaling_factor": float(model.autoencoder.scaling_factor),
            "unet_input": ["noisy latent", "source latent (scaled)",
                           "colour reference, RGB in [-1, 1], resized to the latent size (bilinear, antialiased)"]
                          + (["inpainting mask, the kept fraction of each latent cell (f x f average)"]
                             if model.mask_channel else [])
                          + (["edit vector broadcast over the latent grid"] if model.mapping is None else []),
            "edit_vector": list(EDIT_VECTOR_NAMES[:self.edit_dim]),
            # C as the model reads it: the first four entries (beta, sigma, lambda, mu) divided by these
            "strength_scales": list(model.strength_scales) if model.strength_scales else [1.0] * NUM_STRENGTHS,
            "context": "mapping(edit_vector)" if model.mapping is not None else None,
            # true: the sampled latent is k (z_B - z_A), k = residual_scale; the edit is z_A + sample / k
            "residual": model.residual,
            "residual_scale": model.residual_scale,
            # true: the U-Net predicts x_0 - z_A; the x_0 estimate is z_A + its output
            "source_skip": model.source_skip,
            # "source": the sampled latent is (z_B - mu_A) / s_A (per-example, per-channel mean and population
            # std of z_A, s_A floored at standardise_min_std); "colour_reference": mu_R, s_R of the reference
            # latent instead where e_colour = 1; the U-Net reads z_A standardised by mu_A, s_A and the colour
            # reference standardised by the source image's per-channel mean and std (same floor)
            "standardise": model.standardise,
            "standardise_min_std": model.standardise_min_std,
            # true: the U-Net's class embedding reads C as the mapping network does (class_labels = C)
            "edit_embedding": model.edit_embedding,
            "sampler": {key: self.config.sampler[key] for key in ("name", "num_steps", "eta", "blend_known_region",
                                                                     "source_strength")},
        })
        return written

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        size = self.config.data.crop_size
        image = np.zeros((batch_size, size, size, 3), np.float32)
        return {"source": image, "target": image, "reference": image,
                "mask": np.ones((batch_size, size, size, 1), np.float32),
                "edit_vector": np.zeros((batch_size, EDIT_VECTOR_SIZE), np.float32),
                "task_labels": np.zeros((batch_size, 5), np.float32)}


GRID_COLUMNS = ("source", "reference", "mask", "target", "edited")
# (name, function of ([0, 1] prediction, [0, 1] target) -> (B,), higher is better)
METRICS = (
    ("L1", pixel_metrics.l1, False),
    ("PSNR", lambda p, t: pixel_metrics.psnr(p, t, 1.0), True),
    ("SSIM", lambda p, t: pixel_metrics.ssim(p, t, 1.0), True),
    # One grain realisation cannot be matched pixel for pixel: its amplitude and the picture beneath it can.
    ("HP std error", grain_metrics.highpass_std_error, False),
    ("LP L1", grain_metrics.lowpass_l1, False),
)
DO_NOTHING, MODEL = "do-nothing", "model"


def _to_unit(images) -> jax.Array:
    """[-1, 1] -> [0, 1], float32."""
    return (jnp.asarray(images, jnp.float32) + 1.0) / 2.0


def _edit_label(batch: Mapping[str, np.ndarray], i: int) -> str:
    """A row label: the example's non-zero editing-vector entries, e.g. 'beta=0.42 e_blur'."""
    parts = []
    for name, value in zip(EDIT_VECTOR_NAMES, batch["edit_vector"][i]):
        if value:
            parts.append(name if name.startswith("e_") else f"{name}={value:.2f}")
    return " ".join(parts) or "no edit"


class _EditedEvalSets:
    """The evaluation sets edited by a model, sampled in one compiled call per step and shared by the grid
    and the tables of that step."""

    def __init__(self, method: "MultitaskMethod", eval_sets: Mapping[str, Mapping[str, np.ndarray]], *, seed: int):
        self.eval_sets = {name: {k: np.asarray(v) for k, v in batch.items()} for name, batch in eval_sets.items()}
        self.names = list(self.eval_sets)
        sizes = [len(batch["target"]) for batch in self.eval_sets.values()]
        self._splits = np.cumsum(sizes)[:-1]
        keys = set.intersection(*(set(batch) for batch in self.eval_sets.values()))
        self._batch = {k: np.concatenate([self.eval_sets[n][k] for n in self.names]) for k in keys}
        self._rng = jax.random.key(seed)
        self.sample = ModelFunction(method.sample)
        self._edited_at: tuple[int, dict[str, np.ndarray]] | None = None

    def edited(self, model: MultitaskModel, step: int) -> dict[str, np.ndarray]:
        """Edited images (N, H, W, 3) in [-1, 1] per set name."""
        if self._edited_at is None or self._edited_at[0] != step:
            edited = np.asarray(jax.device_get(self.sample(model, self._batch, self._rng)))
            self._edited_at = (step, dict(zip(self.names, np.split(edited, self._splits))))
        return self._edited_at[1]


class EditGrid(Evaluator):
    """`WORKDIR/NAME/step_N.png`: the first two examples of every set; columns source, reference, mask,
    target, edited; each row labelled with its set and edit vector."""

    writes_samples = True

    def __init__(self, name: str, every: int, edits: _EditedEvalSets, per_set: int = 2):
        super().__init__(name, every)
        self.edits, self.per_set = edits, per_set

    def __call__(self, model, step, workdir, writer) -> str:
        edited = self.edits.edited(model, step)
        sets, k = self.edits.eval_sets, self.per_set
        columns = [(c, np.concatenate([edited[n][:k] if c == "edited" else sets[n][c][:k] for n in self.edits.names]))
                   for c in GRID_COLUMNS]
        labels = [f"{n}: {_edit_label(sets[n], i)}" for n in self.edits.names for i in range(min(k, len(edited[n])))]
        return write_grid(workdir, step, labelled_grid(columns, labels), folder=self.name, writer=writer)


class EditTables(Evaluator):
    """L1 / PSNR / SSIM and the grain statistics (`eval.grain`: high-pass std error, low-pass L1) of the edited
    images against the targets, per set, beside the do-nothing arm (the source itself), on [0, 1] images;
    written as the paper's Tables 2-3 (single tasks, combinations)."""

    def __init__(self, name: str, every: int, edits: _EditedEvalSets):
        super().__init__(name, every)
        self.edits = edits

    def __call__(self, model, step, workdir, writer) -> dict:
        scores = edit_scores({MODEL: self.edits.edited(model, step)}, self.edits.eval_sets)
        write_edit_scores(workdir, step, scores, writer=writer)
        return scores


def edit_scores(edited: Mapping[str, Mapping[str, np.ndarray]],
                eval_sets: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """{set: {arm: {metric: mean}}} of each arm's edited images {arm: {set: (N, H, W, 3) in [-1, 1]}} against
    the sets' targets, with the do-nothing arm (the source itself) last."""
    scores = {}
    for name, batch in eval_sets.items():
        target = _to_unit(batch["target"])
        arms = {**{arm: _to_unit(images[name]) for arm, images in edited.items()}, DO_NOTHING: _to_unit(batch["source"])}
        scores[name] = {arm: {metric: float(jnp.mean(fn(images, target))) for metric, fn, _ in METRICS}
                        for arm, images in arms.items()}
    return scores


def write_edit_scores(workdir: str, step: int, scores: dict, *, writer=None) -> str:
    """`WORKDIR/eval/step_N.{json,md}` in the paper's Tables 2-3 shape: single tasks, then combinations."""
    groups = (("Single tasks", [n for n in scores if "+" not in n]),
              ("Combinations of tasks", [n for n in scores if "+" in n]))
    return write_scores(workdir, step, scores, higher_is_better={m: higher for m, _, higher in METRICS},
                        writer=writer, groups=groups)


METHOD = MultitaskMethod
