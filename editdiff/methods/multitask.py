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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.losses import LOSS_NORMS, diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample
from editdiff.diffusion.schedules import BETA_SCHEDULES, PREDICTION_TYPES, schedule_from_config
from editdiff.diffusion.timesteps import SPACINGS
from editdiff.heads.mapping import MappingNetwork
from editdiff.methods.base import Batch, Method
from editdiff.nn.patch_autoencoder import PatchAutoencoder
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from input_pipeline.config import validate_data_config

EDIT_VECTOR_NAMES = ("beta", "sigma", "lambda", "mu", "e_blur", "e_grain", "e_colour", "e_inpaint", "e_sharpen")
EDIT_VECTOR_SIZE = len(EDIT_VECTOR_NAMES)  # C = [beta, sigma, lambda, mu, e1..e5]
NUM_STRENGTHS = 4  # the scalars before the binary task labels
INPAINT_ONLY = jnp.array([0.0, 0.0, 0.0, 1.0, 0.0])  # task labels [blur, grain, colour, inpaint, sharpen]
AUTOENCODERS = ("patch", "vae")
CONDITIONINGS = ("cross_attention", "concat")

_CHECKS = {
    "model.autoencoder": checks.one_of(AUTOENCODERS),
    "model.patch_factor": checks.int_at_least(1),
    "model.conditioning": checks.one_of(CONDITIONINGS),
    "model.use_task_labels": checks.BOOLEAN,
    "model.mapping.depth": checks.int_at_least(1),
    "model.mapping.hidden_dim": checks.int_at_least(1),
    "model.mapping.num_tokens": checks.int_at_least(1),
    "diffusion.num_train_timesteps": checks.int_at_least(2),
    "diffusion.beta_schedule": checks.one_of(BETA_SCHEDULES),
    "diffusion.beta_start": checks.number_above(0),
    "diffusion.beta_end": checks.number_above(0),
    "diffusion.rescale_betas_zero_snr": checks.BOOLEAN,
    "diffusion.prediction_type": checks.one_of(PREDICTION_TYPES),
    "diffusion.loss": checks.one_of(LOSS_NORMS),
    "diffusion.min_snr_gamma": checks.number_at_least(0),
    "sampler.name": checks.one_of(tuple(samplers.SAMPLERS)),
    "sampler.num_steps": checks.int_at_least(1),
    "sampler.eta": checks.number_in(0, 1),
    "sampler.spacing": checks.one_of(SPACINGS),
    "sampler.blend_known_region": checks.BOOLEAN,
}


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Every multitask key (model, diffusion, sampler, data, pretrained) checked before anything compiles."""
    problems = checks.find_problems(config, _CHECKS)
    if not problems:
        if config.model.autoencoder == "vae" and not config.pretrained:
            problems.append("config.model.autoencoder = 'vae' needs config.pretrained: a diffusers pipeline "
                            "directory with a vae/ subfolder")
        if config.pretrained and not os.path.isdir(config.pretrained):
            problems.append(f"config.pretrained = {config.pretrained!r} is not a directory")
        if config.sampler.num_steps > config.diffusion.num_train_timesteps:
            problems.append(f"config.sampler.num_steps = {config.sampler.num_steps} is invalid; allowed: at most "
                            f"config.diffusion.num_train_timesteps = {config.diffusion.num_train_timesteps}")
        factor = config.model.patch_factor
        if config.model.autoencoder == "vae" and os.path.isdir(config.pretrained):
            from editdiff.interop.torch_io import read_config
            from editdiff.nn.vae import VAEConfig

            factor = VAEConfig.from_diffusers(read_config(os.path.join(config.pretrained, "vae"))).downsample_factor
        if config.data.crop_size % factor:
            problems.append(f"config.data.crop_size = {config.data.crop_size} is invalid; allowed: a multiple of "
                            f"the autoencoder's downsampling factor {factor}")
    checks.raise_problems(problems, "multitask")
    validate_data_config(config.data)


def _write_json(path: str, content: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """A copy of a pretrained U-Net taking `in_channels` input channels: conv_in's new input channels get zero
    weights, so at initialisation the concatenated conditions change nothing (as InstructPix2Pix does)."""
    old = unet.config.in_channels
    if in_channels < old:
        raise ValueError(f"widen_conv_in: in_channels={in_channels} is fewer than the U-Net's {old}")
    config = dataclasses.replace(unet.config, in_channels=in_channels)
    widened = nnx.eval_shape(lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0), dtype=unet.dtype))
    pretrained = dict(nnx.to_flat_state(nnx.state(unet, nnx.Param)))
    for path, variable in nnx.to_flat_state(nnx.state(widened, nnx.Param)):
        value = pretrained[path][...]
        if path == ("conv_in", "kernel"):  # (kh, kw, in, out): new input channels get zero weights
            value = jnp.pad(value, ((0, 0), (0, 0), (0, in_channels - old), (0, 0)))
        variable.set_value(value)  # set_value (not [...] =) fills the abstract model
    return widened


class MultitaskModel(nnx.Module):
    """Autoencoder (frozen), denoising U-Net and mapping network f_theta (None for Palette++)."""

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel, mapping: MappingNetwork | None,
                 *, use_task_labels: bool):
        self.autoencoder = autoencoder
        self.unet = unet
        self.mapping = mapping
        self.use_task_labels = use_task_labels

    def encode(self, images: jax.Array) -> jax.Array:
        """z = s * E(x): the posterior mean, scaled. (B, H, W, 3) -> (B, h, w, latent_channels) float32."""
        ae = self.autoencoder
        return (ae.scaling_factor * ae.encode(images).mean).astype(jnp.float32)

    def decode(self, latents: jax.Array) -> jax.Array:
        """x = D(z / s), clipped to [-1, 1]. (B, h, w, latent_channels) -> (B, H, W, 3) float32."""
        ae = self.autoencoder
        return jnp.clip(ae.decode(latents / ae.scaling_factor).astype(jnp.float32), -1.0, 1.0)

    def conditions(self, batch: Batch) -> tuple[jax.Array, jax.Array | None]:
        """The image conditions concatenated to z_t (B, h, w, c) and the cross-attention context (or None)."""
        source_latent = self.encode(batch["source"])
        b, h, w, _ = source_latent.shape
        reference = jax.image.resize(batch["reference"].astype(jnp.float32), (b, h, w, 3), "linear",
                                     antialias=True)
        edit = batch["edit_vector"].astype(jnp.float32)
        if not self.use_task_labels:
            edit = edit[:, :NUM_STRENGTHS]
        concat = [source_latent, reference]
        if self.mapping is None:  # Palette++: C expanded to the latent size
            concat.append(jnp.broadcast_to(edit[:, None, None, :], (b, h, w, edit.shape[-1])))
            return jnp.concatenate(concat, axis=-1), None
        return jnp.concatenate(concat, axis=-1), self.mapping(edit)

    def denoise(self, noisy_latent: jax.Array, t: jax.Array, image_conditions: jax.Array,
                context: jax.Array | None) -> jax.Array:
        """eps_theta(z_t, t | conditions): the U-Net on concat(z_t, conditions), float32 (B, h, w, C)."""
        unet_input = jnp.concatenate([noisy_latent, image_conditions], axis=-1)
        return self.unet(unet_input, t, context).astype(jnp.float32)


class MultitaskMethod(Method):
    """Builds `MultitaskModel`, trains the U-Net and f_theta with the L1/L2 noise loss, samples with the
    configured sampler."""

    def __init__(self, config: ml_collections.ConfigDict):
        validate_config(config)
        super().__init__(config)
        self.schedule = schedule_from_config(config.diffusion)
        self.dtype = jnp.dtype(config.compute_dtype)
        self.edit_dim = EDIT_VECTOR_SIZE if config.model.use_task_labels else NUM_STRENGTHS

    def _autoencoder(self) -> nnx.Module:
        if self.config.model.autoencoder == "patch":
            return PatchAutoencoder(self.config.model.patch_factor)
        from editdiff.interop.diffusers_vae import load_vae  # torch-free unless a .bin is read

        return load_vae(os.path.join(self.config.pretrained, "vae"), dtype=self.dtype)

    def _unet(self, latent_channels: int, rngs: nnx.Rngs) -> UNet2DConditionModel:
        model_config = self.config.model
        concat = model_config.conditioning == "concat"
        in_channels = 2 * latent_channels + 3 + (self.edit_dim if concat else 0)
        if self.config.pretrained and not model_config.unet:
            from editdiff.interop.diffusers_unet import load_unet

            unet = load_unet(os.path.join(self.config.pretrained, "unet"), dtype=self.dtype)
            if concat and unet.config.has_cross_attention:
                raise ValueError("config.model.conditioning = 'concat' (Palette++) needs a U-Net without "
                                 "cross-attention; the pretrained U-Net has cross-attention blocks")
            return widen_conv_in(unet, in_channels)
        fields = model_config.unet.to_dict()
        if concat:
            fields["down_block_types"] = tuple("DownBlock2D" for _ in fields["down_block_types"])
            fields["up_block_types"] = tuple("UpBlock2D" for _ in fields["up_block_types"])
            fields["mid_block_type"] = "UNetMidBlock2D"
        unet_config = UNetConfig(**fields, in_channels=in_channels, out_channels=latent_channels)
        return UNet2DConditionModel(unet_config, rngs=rngs, dtype=self.dtype)

    def init_model(self, rngs: nnx.Rngs) -> MultitaskModel:
        model_config = self.config.model
        autoencoder = self._autoencoder()
        unet = self._unet(autoencoder.latent_channels, rngs)
        mapping = None
        if model_config.conditioning == "cross_attention":
            mapping = MappingNetwork(self.edit_dim, unet.config.cross_attention_dim,
                                     depth=model_config.mapping.depth, hidden_dim=model_config.mapping.hidden_dim,
                                     num_tokens=model_config.mapping.num_tokens, rngs=rngs, dtype=self.dtype)
        return MultitaskModel(autoencoder, unet, mapping, use_task_labels=model_config.use_task_labels)

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("unet"), nnx.PathContains("mapping")))

    def loss(self, model: MultitaskModel, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        t_key, noise_key = jax.random.split(rng)
        target_latent = model.encode(batch["target"])
        image_conditions, context = model.conditions(batch)
        t = sample_timesteps(t_key, target_latent.shape[0], self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, target_latent.shape, jnp.float32)
        noisy = q_sample(self.schedule, target_latent, t, noise)
        prediction = model.denoise(noisy, t, image_conditions, context)
        gamma = self.config.diffusion.min_snr_gamma or None
        loss = diffusion_loss(self.schedule, prediction, target_latent, noise, t,
                              norm=self.config.diffusion.loss, min_snr_gamma=gamma)
        return loss, {"loss": loss}

    def sample(self, model: MultitaskModel, batch: Batch, rng: jax.Array) -> jax.Array:
        image_conditions, context = model.conditions(batch)
        b, h, w, _ = image_conditions.shape
        start_key, step_key = jax.random.split(rng)
        x_T = jax.random.normal(start_key, (b, h, w, model.autoencoder.latent_channels), jnp.float32)

        def model_fn(z, t):
            return model.denoise(z, t, image_conditions, context)

        s = self.config.sampler
        settings = dict(num_steps=s.num_steps, spacing=s.spacing) | ({"eta": s.eta} if s.name == "ddim" else {})
        if s.blend_known_region:
            source_latent = image_conditions[..., :model.autoencoder.latent_channels]
            settings |= dict(known_latent=source_latent, known_mask=self._known_latent_mask(model, batch))
        latents = samplers.sampler_by_name(s.name)(model_fn, self.schedule, x_T, step_key, **settings)
        return model.decode(latents)

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
        import input_pipeline

        return input_pipeline.create_eval_sets(self.config.data)

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
        diffusion = self.config.diffusion
        _write_json(written[-1], {
            "_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": self.config.sampler.spacing,
            **{key: diffusion[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                               "rescale_betas_zero_snr", "prediction_type")}})
        written.append(os.path.join(directory, "multitask.json"))
        _write_json(written[-1], {
            "method": "multitask",
            "autoencoder": autoencoder,
            "scaling_factor": float(model.autoencoder.scaling_factor),
            "unet_input": ["noisy target latent", "source latent (scaled)",
                           "colour reference, RGB in [-1, 1], resized to the latent size (bilinear, antialiased)"]
                          + (["edit vector broadcast over the latent grid"] if model.mapping is None else []),
            "edit_vector": list(EDIT_VECTOR_NAMES[:self.edit_dim]),
            "context": "mapping(edit_vector)" if model.mapping is not None else None,
        })
        return written

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        size = self.config.data.crop_size
        image = np.zeros((batch_size, size, size, 3), np.float32)
        return {"source": image, "target": image, "reference": image,
                "mask": np.ones((batch_size, size, size, 1), np.float32),
                "edit_vector": np.zeros((batch_size, EDIT_VECTOR_SIZE), np.float32),
                "task_labels": np.zeros((batch_size, 5), np.float32)}


METHOD = MultitaskMethod
