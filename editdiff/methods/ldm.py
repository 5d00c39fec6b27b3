"""Plain latent diffusion: denoising training of a U-Net, the base the rectifier and plugin demos start from.

The model (images in [-1, 1], NHWC; METHODS.md notation):

    z_0 = s * E(x)                            frozen autoencoder: the patch autoencoder (s = 1) or an SD VAE
    c   = null context                        unconditional: a learned (num_tokens, cross_attention_dim)
          | CLIP_text(caption).last_hidden    text-conditioned: a frozen CLIP text encoder; a caption is
                                              replaced by the empty one with probability caption_dropout
    z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps,   t ~ U{0, ..., T - 1}
    loss = || UNet(z_t, t, c) - target ||_p   target = eps, v or z_0 (config.diffusion.prediction_type)

Only the U-Net (and the null context) train. Sampling runs `config.sampler` from per-image seeded noise, with
classifier-free guidance against the empty caption when text-conditioned and `sampler.guidance_scale` != 1.

Batch fields (`input_pipeline.captions`): `image` (B, H, W, 3) float32 in [-1, 1]; `input_ids` (B, L) int32
(text-conditioned only, L = the text encoder's max_position_embeddings).

Evaluators (`config.evals.NAME.kind`):

    samples   a labelled grid of num_rows x num_columns samples, noise fixed by `seed` (cell r, c uses noise
              index r * num_columns + c); unconditional rows begin with a training crop, text rows are
              prompts (`prompts`, default the held-out captions, then with their held-out image)
    fid       FID and KID (x100) of `num_images` samples against as many held-out crops, on the FID
              Inception-V3 (`inception_weights`: the directory of pytorch-fid's weights file; "" = off).
              Reference arm `train_images`: as many training crops against the same held-out crops, the
              score of a model that reproduced its training images exactly (the do-nothing arm of a
              generative model: no generation at all). A model near it has learnt the training images; the
              gap between the two is the generalisation the data allows. Text-conditioned samples use the
              held-out captions. `feature_size` != 299 runs Inception at that size (tests; not a standard FID).

Export (`--mode=export`, `WORKDIR/export/`), a diffusers-style directory that `config.pretrained.root` of
another method accepts:

    unet/                       UNet2DConditionModel (config.json + safetensors)
    scheduler/scheduler_config.json   DDIMScheduler of the run's schedule
    vae/                        AutoencoderKL (VAE runs)
    text_encoder/, tokenizer/   copies of the frozen CLIP text encoder and tokenizer (text runs)
    null_context/null_context.safetensors   key "null_context", (1, num_tokens, cross_attention_dim) float32:
                                the U-Net's `encoder_hidden_states` for every image (unconditional runs;
                                `load_null_context(DIR)` reads it)
    model_index.json            StableDiffusionPipeline (VAE + text runs only)
    ldm.json                    the autoencoder (kind, patch factor, scaling factor), conditioning, files, and
                                diffusers_max_abs_error: the exported U-Net loaded by diffusers against the JAX
                                one on a fixed input (also logged; null when torch / diffusers are missing)

A run with `config.pretrained.root = DIR/export` and `config.model.unet = {}` starts from the exported U-Net
(and, unconditional, from its null context): fine-tuning or a longer run from an ldm base.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.config import (default_diffusion_config, default_sampler_config, diffusers_scheduler_config,
                                       diffusion_section, loss_settings, sampler_section, sampler_settings)
from editdiff.diffusion.losses import diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample
from editdiff.diffusion.samplers import classifier_free_guidance
from editdiff.diffusion.schedules import schedule_from_config
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict, write_safetensors
from editdiff.methods import latents as latents_lib
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.reports import ModelFunction, labelled_grid, write_grid, write_scores
from editdiff.nn.clip import CLIPTextConfig, CLIPTextTransformer
from editdiff.nn.patch_autoencoder import IMAGE_CHANNELS, PatchAutoencoder
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.pretrained import pretrained_path, pretrained_section
from editdiff.tracing import abstract_module
from input_pipeline import captions as data

AUTOENCODERS = ("patch", "vae")
CONDITIONINGS = ("unconditional", "text")
ATTENTION_IMPLEMENTATIONS = ("", "xla", "cudnn")
NULL_CONTEXT_FILE = os.path.join("null_context", "null_context.safetensors")
_DERIVED_UNET_KEYS = ("in_channels", "out_channels")


# ---------------------------------------------------------------------------------------------------------
# Config: defaults of the method's own sections and their validation.


def default_model_config() -> ml_collections.ConfigDict:
    """`config.model`; `unet` holds diffusers UNet2DConditionModel keys (in/out channels are derived from the
    autoencoder, cross_attention_dim from the text encoder when text-conditioned); {} = the pretrained U-Net."""
    return ml_collections.ConfigDict(dict(
        autoencoder="patch",  # "patch" (pixel-unshuffle, no weights) | "vae" (config.pretrained vae)
        patch_factor=2,
        conditioning="unconditional",  # | "text" (frozen CLIP text encoder + tokenizer from config.pretrained)
        null_context_tokens=1,  # unconditional: tokens of the learned context
        caption_dropout=0.1,  # text: probability a training caption is replaced by "" (for guidance)
        attention_implementation="",  # "" = XLA's choice | "xla" | "cudnn" (fused flash attention, GPU)
        remat=False,  # checkpoint every U-Net block: less activation memory, one more forward per step
        unet=ml_collections.ConfigDict(),
    ))


def ldm_diffusion_config() -> ml_collections.ConfigDict:
    """`config.diffusion` (`editdiff.diffusion.config`) with the plain noise loss, L2, as SD trains."""
    config = default_diffusion_config()
    config.loss = "l2"
    return config


def ldm_sampler_config() -> ml_collections.ConfigDict:
    """`config.sampler` (`editdiff.diffusion.config`) without the known-region blend (nothing is known
    here) and with `guidance_scale`: classifier-free guidance of text-conditioned samples (1 = none)."""
    config = default_sampler_config()
    del config["blend_known_region"]
    config.guidance_scale = 1.0
    return config


def _sampler_section() -> checks.Section:
    shared = sampler_section()
    table = {key: check for key, check in shared.checks.items() if key != "blend_known_region"}
    return checks.Section("sampler", {**table, "guidance_scale": checks.number_at_least(0)}, rules=shared.rules)


def samples_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "samples" with its defaults."""
    return ml_collections.ConfigDict(dict(kind="samples", every=every, **{**_SAMPLES_DEFAULTS, **settings}))


def fid_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "fid" with its defaults (inception_weights "" = off)."""
    return ml_collections.ConfigDict(dict(kind="fid", every=every, **{**_FID_DEFAULTS, **settings}))


_SAMPLES_DEFAULTS = dict(num_rows=4, num_columns=4, seed=0, prompts=())
_FID_DEFAULTS = dict(inception_weights="", num_images=64, batch_size=16, seed=0, feature_size=299)

_STRINGS: checks.Check = ((lambda v: isinstance(v, (tuple, list)) and all(isinstance(p, str) for p in v)),
                          "a tuple of strings")


def _inception_file_present(value) -> bool:
    from eval.weights import INCEPTION_FILE

    return isinstance(value, str) and (value == "" or os.path.isfile(os.path.join(value, INCEPTION_FILE[0])))


_EVAL_CHECKS: dict[str, dict[str, checks.Check]] = {
    "samples": {"num_rows": checks.int_at_least(1), "num_columns": checks.int_at_least(1),
                "seed": checks.int_at_least(0), "prompts": _STRINGS},
    "fid": {"inception_weights": (_inception_file_present, "'' (off) or a directory holding "
                                  "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception weights)"),
            "num_images": checks.int_at_least(2), "batch_size": checks.int_at_least(1),
            "seed": checks.int_at_least(0), "feature_size": checks.int_at_least(75)},
}

_MODEL_CHECKS = {
    "autoencoder": checks.one_of(AUTOENCODERS),
    "patch_factor": checks.int_at_least(1),
    "conditioning": checks.one_of(CONDITIONINGS),
    "null_context_tokens": checks.int_at_least(1),
    "caption_dropout": checks.number_in(0, 1),
    "attention_implementation": checks.one_of(ATTENTION_IMPLEMENTATIONS),
    "remat": checks.BOOLEAN,
    "unet": ((lambda v: isinstance(v, ml_collections.ConfigDict)), "a ConfigDict of diffusers U-Net keys"),
}
def _required_parts(config) -> tuple[str, ...]:
    model = config.get("model") or {}
    parts = ("vae",) if model.get("autoencoder") == "vae" else ()
    parts += ("text_encoder", "tokenizer") if model.get("conditioning") == "text" else ()
    return parts + (("unet",) if isinstance(model.get("unet"), ml_collections.ConfigDict)
                    and not model.get("unet") else ())


def _base_sections(config) -> list[checks.Section]:
    return [checks.Section("model", _MODEL_CHECKS), diffusion_section(), _sampler_section(),
            *data.image_data_sections(),
            pretrained_section(require=_required_parts(config))]


def text_encoder_config(directory: str) -> CLIPTextConfig:
    """The CLIP text config of a transformers directory: a CLIPTextModel (Stable Diffusion's text_encoder/,
    no projection), a CLIPTextModelWithProjection or a full CLIPModel (its text_config)."""
    raw = read_config(directory)
    if raw.get("model_type") == "clip":
        text = dict(raw.get("text_config") or {})
        text.update(raw.get("text_config_dict") or {})  # old CLIPModel configs keep overrides here
    elif raw.get("model_type") == "clip_text_model":
        text = raw
    else:
        raise CheckpointError(f"{directory}: config.json model_type={raw.get('model_type')!r}; expected "
                              "'clip_text_model' (CLIPTextModel) or 'clip' (CLIPModel)")
    try:
        return CLIPTextConfig.from_transformers_dict(text)
    except ValueError as error:
        raise CheckpointError(f"{directory}: {error}") from error


def _latent_channels_and_factor(config) -> tuple[int, int]:
    if config.model.autoencoder == "patch":
        return IMAGE_CHANNELS * config.model.patch_factor ** 2, config.model.patch_factor
    from editdiff.nn.vae import VAEConfig

    vae = VAEConfig.from_diffusers(read_config(pretrained_path(config, "vae")))
    return vae.latent_channels, vae.downsample_factor


def unet_config(config, latent_channels: int, latent_size: int, text_width: int | None) -> UNetConfig:
    """The U-Net's config: `config.model.unet` with derived in/out channels (and cross_attention_dim when
    text-conditioned, sample_size the latent size), or the pretrained U-Net's config.json when it is {}."""
    fields = config.model.unet.to_dict()
    if not fields:
        return UNetConfig.from_diffusers(read_config(pretrained_path(config, "unet")))
    fields.setdefault("sample_size", latent_size)
    if text_width is not None:
        fields.setdefault("cross_attention_dim", text_width)
    return UNetConfig(**fields, in_channels=latent_channels, out_channels=latent_channels)


def _model_rules(config) -> list[str]:
    """Cross-key checks, run only when every section they read is valid (their own errors come first)."""
    if any(section.problems(config) for section in _base_sections(config)):
        return []
    problems = []
    model = config.model
    try:
        channels, factor = _latent_channels_and_factor(config)
        text_width = (text_encoder_config(pretrained_path(config, "text_encoder")).hidden_size
                      if model.conditioning == "text" else None)
    except (CheckpointError, ValueError) as error:
        return [f"config.pretrained: {error}"]
    crop = config.data.crop_size
    if crop % factor:
        problems.append(f"config.data.crop_size = {crop} is invalid; allowed: a multiple of the autoencoder's "
                        f"downsampling factor {factor}")
    derived = [key for key in _DERIVED_UNET_KEYS if key in model.unet]
    if derived:
        problems.append(f"config.model.unet.{derived[0]} = {model.unet[derived[0]]!r} is invalid; allowed: no "
                        f"value (derived: the autoencoder's {channels} latent channels)")
    else:
        try:
            unet = unet_config(config, channels, crop // factor, text_width)
        except (TypeError, ValueError, CheckpointError) as error:
            where = "config.model.unet" if model.unet else f"config.pretrained unet ({pretrained_path(config, 'unet')})"
            return problems + [f"{where}: {error}"]
        if not model.unet and (unet.in_channels, unet.out_channels) != (channels, channels):
            problems.append(f"config.pretrained unet: in/out channels ({unet.in_channels}, {unet.out_channels}) "
                            f"do not fit the autoencoder's {channels} latent channels")
        if text_width is not None and unet.cross_attention_dim != text_width:
            problems.append(f"config.model.unet.cross_attention_dim = {unet.cross_attention_dim} is invalid; "
                            f"allowed: the text encoder's hidden_size {text_width} (or no value: derived)")
    if model.conditioning == "unconditional" and config.sampler.guidance_scale != 1.0:
        problems.append(f"config.sampler.guidance_scale = {config.sampler.guidance_scale!r} is invalid; allowed: "
                        "1.0 for an unconditional model (guidance needs a text condition)")
    return problems


def _evals_rule(config) -> list[str]:
    problems = []
    for name, entry in config.evals.items():
        if isinstance(entry, ml_collections.ConfigDict) and entry.get("kind") in _EVAL_CHECKS:
            table = {"kind": checks.ANY, "every": checks.ANY, **_EVAL_CHECKS[entry.kind]}
            problems += checks.Section(f"evals.{name}", table).problems(config)
    return problems


# ---------------------------------------------------------------------------------------------------------
# The model.


class TextEncoder(nnx.Module):
    """A frozen CLIP text transformer (no projection): (B, L) token ids -> last_hidden_state (B, L, D), the
    context Stable Diffusion's U-Net attends to."""

    def __init__(self, config: CLIPTextConfig, *, dtype, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return self.text_model(input_ids)[1]


def load_text_encoder(directory: str, config: CLIPTextConfig) -> TextEncoder:
    """The frozen text transformer of a transformers CLIP directory (float32); the projection, the other tower
    and position_ids buffers are not read. CheckpointError on any mismatch."""
    from editdiff.interop.name_map import load_state_dict
    from editdiff.interop.transformers_clip import WEIGHT_FILES, text_rules

    state_dict, path = read_state_dict(directory, WEIGHT_FILES)
    if not any(key.startswith("text_model.") for key in state_dict):
        # transformers >= 5 saves a CLIPTextModel without the `text_model.` prefix (older ones, SD's, with it).
        state_dict = {f"text_model.{key}": value for key, value in state_dict.items()}
    rules = [rule for rule in text_rules(config) if rule.flax_path[0] == "text_model"]
    # Abstract construction skips the random initialisers; loading makes every parameter concrete.
    encoder = abstract_module(lambda: TextEncoder(config, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    ignore = [key for key in state_dict
              if not key.startswith("text_model.") or key == "text_model.embeddings.position_ids"]
    load_state_dict(encoder, state_dict, rules, source=path, ignore=ignore)
    return encoder


def text_encoder_state(directory: str, config: CLIPTextConfig) -> dict[tuple, np.ndarray]:
    """load_text_encoder's parameters as {path under TextEncoder: array}."""
    encoder = load_text_encoder(directory, config)
    return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(encoder, nnx.Param))}


def empty_caption_context(text_encoder_directory: str, tokenizer_directory: str) -> np.ndarray:
    """(1, L, D) float32: the frozen text encoder's last_hidden_state for the empty caption, L its
    max_position_embeddings, D its hidden_size. A text-conditioned model's unconditional context (the one
    classifier-free guidance and a dropped caption use)."""
    from editdiff.interop.transformers_clip import load_clip_tokenizer, tokenize

    config = text_encoder_config(text_encoder_directory)
    ids = tokenize(load_clip_tokenizer(tokenizer_directory), [""], config.max_position_embeddings)
    encoder = load_text_encoder(text_encoder_directory, config)
    return np.asarray(nnx.jit(lambda e, i: e(i))(encoder, jnp.asarray(ids)), np.float32)


class LatentDiffusionModel(latents_lib.LatentModel):
    """Frozen autoencoder, trainable U-Net, and the context: a trainable null context (unconditional) or a
    frozen text encoder (text)."""

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel, *, null_context: nnx.Param | None,
                 text_encoder: TextEncoder | None):
        self.autoencoder = autoencoder
        self.unet = unet
        self.null_context = null_context
        self.text_encoder = text_encoder

    def context(self, batch_size: int, input_ids: jax.Array | None = None) -> jax.Array:
        """The cross-attention context (B, L, D): the null context broadcast, or the caption's encoding."""
        if self.text_encoder is None:
            null = self.null_context[...]
            return jnp.broadcast_to(null[None], (batch_size, *null.shape))
        return self.text_encoder(input_ids)

    def denoise(self, noisy_latent: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        """The U-Net's prediction (of the schedule's prediction type), float32 (B, h, w, C)."""
        return self.unet(noisy_latent, t, context).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# The method.


class LDMMethod(Method):
    """Plain latent diffusion training (module docstring)."""

    evaluator_kinds = ("samples", "fid")

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        return [*_base_sections(config), checks.Section("", {}, closed=False, rules=(_model_rules, _evals_rule))]

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.schedule = schedule_from_config(config.diffusion)
        self.dtype = jnp.dtype(config.compute_dtype)
        self.text = config.model.conditioning == "text"
        self.latent_channels, self.downsample_factor = _latent_channels_and_factor(config)
        self.text_config = (text_encoder_config(pretrained_path(config, "text_encoder")) if self.text else None)
        self._tokenizer = None
        # The empty caption's ids: the dropped-caption context in training and guidance's unconditional one.
        self.empty_ids = self.tokenize([""])[0] if self.text else None
        # `sample` jitted once per model graph and batch shape, shared by the evaluators.
        self.sample_function = ModelFunction(self.sample)

    # -- text -----------------------------------------------------------------------------------------

    def tokenize(self, texts) -> np.ndarray:
        """(N, L) int32 ids of `texts`, L = the text encoder's max_position_embeddings."""
        from editdiff.interop.transformers_clip import load_clip_tokenizer, tokenize

        if self._tokenizer is None:
            self._tokenizer = load_clip_tokenizer(pretrained_path(self.config, "tokenizer"))
        return tokenize(self._tokenizer, list(texts), self.text_config.max_position_embeddings)

    # -- model ----------------------------------------------------------------------------------------

    def _unet_config(self) -> UNetConfig:
        width = self.text_config.hidden_size if self.text else None
        return unet_config(self.config, self.latent_channels, self.config.data.crop_size // self.downsample_factor,
                           width)

    def init_model(self, rngs: nnx.Rngs) -> LatentDiffusionModel:
        model = self.config.model
        if model.autoencoder == "patch":
            autoencoder = PatchAutoencoder(model.patch_factor)
        else:
            from editdiff.nn.vae import AutoencoderKL, VAEConfig

            vae_config = VAEConfig.from_diffusers(read_config(pretrained_path(self.config, "vae")))
            autoencoder = AutoencoderKL(vae_config, rngs=rngs, dtype=self.dtype)
        unet = UNet2DConditionModel(self._unet_config(), rngs=rngs, dtype=self.dtype,
                                    attention_implementation=model.attention_implementation or None,
                                    remat=model.remat)
        null_context = text_encoder = None
        if self.text:
            text_encoder = TextEncoder(self.text_config, dtype=self.dtype, rngs=rngs)
        else:
            # Unit variance, as the layer-normed text embeddings the same cross-attention would see in SD.
            shape = (model.null_context_tokens, unet.config.cross_attention_dim)
            null_context = nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32))
        return LatentDiffusionModel(autoencoder, unet, null_context=null_context, text_encoder=text_encoder)

    def pretrained_state(self) -> FlatState:
        state: dict[tuple, np.ndarray] = {}

        def add(prefix: str, module: nnx.Module) -> None:
            state.update({(prefix, *path): np.asarray(v[...])
                          for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))})

        if self.config.model.autoencoder == "vae":
            from editdiff.interop.diffusers_vae import load_vae

            add("autoencoder", load_vae(pretrained_path(self.config, "vae")))
        if not self.config.model.unet:
            from editdiff.interop.diffusers_unet import load_unet

            add("unet", load_unet(pretrained_path(self.config, "unet")))
            # An ldm export's null context belongs with its U-Net: it starts from there too.
            null_context = os.path.join(self.config.pretrained.root, NULL_CONTEXT_FILE)
            if not self.text and self.config.pretrained.root and os.path.isfile(null_context):
                state[("null_context",)] = load_null_context(self.config.pretrained.root)[0]
        if self.text:
            encoder = text_encoder_state(pretrained_path(self.config, "text_encoder"), self.text_config)
            state.update({("text_encoder", *path): value for path, value in encoder.items()})
        return state

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("unet"), nnx.PathContains("null_context")))

    # -- data -----------------------------------------------------------------------------------------

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        return data.ImageBatches(self.config.data, tokenize=self.tokenize if self.text else None,
                                 start_step=start_step, process_index=process_index, process_count=process_count)

    def fixed_batch(self, split: str, count: int, seed: int) -> dict[str, Any]:
        """`count` fixed examples of a split (see `input_pipeline.captions.fixed_examples`), with `input_ids`
        of their captions when text-conditioned."""
        examples = data.fixed_examples(self.config.data, split, count, seed, captioned=self.text)
        if self.text:
            examples["input_ids"] = self.tokenize(examples["caption"])
        return examples

    # -- training and sampling ------------------------------------------------------------------------

    def _training_context(self, model: LatentDiffusionModel, batch: Batch, key: jax.Array, batch_size: int):
        if not self.text:
            return model.context(batch_size)
        ids = batch["input_ids"]
        dropped = jax.random.bernoulli(key, self.config.model.caption_dropout, (batch_size,))
        ids = jnp.where(dropped[:, None], jnp.asarray(self.empty_ids)[None], ids)
        return model.context(batch_size, ids)

    def loss(self, model: LatentDiffusionModel, batch: Batch, rng: jax.Array):
        t_key, noise_key, drop_key = jax.random.split(rng, 3)
        latents = model.encode(batch["image"])
        b = latents.shape[0]
        context = self._training_context(model, batch, drop_key, b)
        t = sample_timesteps(t_key, b, self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, latents.shape, jnp.float32)
        prediction = model.denoise(q_sample(self.schedule, latents, t, noise), t, context)
        loss = diffusion_loss(self.schedule, prediction, latents, noise, t, **loss_settings(self.config.diffusion))
        return loss, {"latent_std": jnp.std(latents)}

    def initial_noise(self, rng: jax.Array, batch_size: int, image_size: tuple[int, int]) -> jax.Array:
        """x_T (B, h, w, C): image i's noise is a function of (rng, i) alone, whatever the batch size."""
        f = self.downsample_factor
        shape = (image_size[0] // f, image_size[1] // f, self.latent_channels)
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32))(
            jnp.arange(batch_size))

    def sample(self, model: LatentDiffusionModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """Images (B, H, W, 3) in [-1, 1] of the batch's size (`image` gives the shape) and captions."""
        b, h, w, _ = batch["image"].shape
        start_key, step_key = jax.random.split(rng)
        x_T = self.initial_noise(start_key, b, (h, w))
        context = model.context(b, batch.get("input_ids"))
        model_fn = lambda z, t: model.denoise(z, t, context)  # noqa: E731
        s = self.config.sampler
        if self.text and s.guidance_scale != 1.0:
            unconditional = model.context(b, jnp.broadcast_to(jnp.asarray(self.empty_ids), (b, len(self.empty_ids))))

            def both(z, t):
                prediction = model.denoise(jnp.concatenate([z, z]), jnp.concatenate([t, t]),
                                           jnp.concatenate([context, unconditional]))
                return prediction[:b], prediction[b:]

            model_fn = classifier_free_guidance(both, s.guidance_scale)
        latents = samplers.sampler_by_name(s.name)(model_fn, self.schedule, x_T, step_key, **sampler_settings(s))
        return model.decode(latents)

    # -- evaluation -----------------------------------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        found = []
        for name, entry in self.config.evals.items():
            if entry.kind == "samples":
                found.append(SampleGrid(name, entry.every, self, entry))
            elif not entry.inception_weights:
                logging.info("config.evals.%s (fid) is off: config.evals.%s.inception_weights is ''", name, name)
            else:
                found.append(FrechetEvaluator(name, entry.every, self, entry))
        return found

    # -- export ---------------------------------------------------------------------------------------

    def export(self, model: LatentDiffusionModel, directory: str) -> list[str]:
        """The diffusers-style directory of the module docstring; returns the paths written."""
        from editdiff.interop.diffusers_unet import export_unet

        if jax.process_index() != 0:
            return []
        written = [os.path.join(directory, "unet")]
        export_unet(model.unet, written[-1])
        written.append(os.path.join(directory, "scheduler", "scheduler_config.json"))
        _write_json(written[-1], diffusers_scheduler_config(self.config.diffusion, self.config.sampler))
        if isinstance(model.autoencoder, PatchAutoencoder):
            autoencoder = {"kind": "patch", "factor": model.autoencoder.factor}
        else:
            from editdiff.interop.diffusers_vae import export_vae

            written.append(os.path.join(directory, "vae"))
            export_vae(model.autoencoder, written[-1])
            autoencoder = {"kind": "vae", "subfolder": "vae"}
        files = {"unet": "unet", "scheduler": "scheduler"}
        error = self.exported_unet_error(model, written[0])
        if error is not None:
            logging.info("Exported U-Net in diffusers (PyTorch) vs the JAX U-Net: max abs error %.2e", error)
        if self.text:
            for part in ("text_encoder", "tokenizer"):  # frozen: the pretrained directories, unchanged
                written.append(os.path.join(directory, part))
                shutil.copytree(pretrained_path(self.config, part), written[-1], dirs_exist_ok=True)
                files[part] = part
            if autoencoder["kind"] == "vae":
                written.append(os.path.join(directory, "model_index.json"))
                _write_json(written[-1], _stable_diffusion_index())
        else:
            written.append(write_null_context(directory, np.asarray(model.null_context[...])[None]))
            files["null_context"] = NULL_CONTEXT_FILE
        written.append(os.path.join(directory, "ldm.json"))
        _write_json(written[-1], {
            "method": "ldm", "diffusers_max_abs_error": error, "autoencoder": autoencoder, "scaling_factor": float(model.autoencoder.scaling_factor),
            "conditioning": self.config.model.conditioning, "files": files,
            "context": ("null_context (1, tokens, cross_attention_dim), repeated over the batch" if not self.text
                        else "text_encoder(tokenizer(caption)).last_hidden_state"),
        })
        return written


    def exported_unet_error(self, model: LatentDiffusionModel, unet_directory: str) -> float | None:
        """Max abs difference of the noise predictions of the exported U-Net loaded by diffusers (PyTorch,
        float32) and the JAX U-Net, on two fixed random latents at t = 10 and 900 with the run's context (the
        null context, or the empty caption's encoding); None when torch or diffusers is not installed."""
        try:
            import torch
            from diffusers import UNet2DConditionModel as TorchUNet
        except ImportError:
            return None
        crop = self.config.data.crop_size // self.downsample_factor
        z_t = jax.random.normal(jax.random.key(0), (2, crop, crop, self.latent_channels), jnp.float32)
        t = jnp.array([10, 900], jnp.int32)
        ids = jnp.broadcast_to(jnp.asarray(self.empty_ids), (2, len(self.empty_ids))) if self.text else None
        context = model.context(2, ids)
        expected = np.asarray(model.denoise(z_t, t, context), np.float32)
        unet = TorchUNet.from_pretrained(unet_directory).eval()
        with torch.no_grad():
            got = unet(torch.from_numpy(np.array(z_t)).permute(0, 3, 1, 2), torch.from_numpy(np.array(t)),
                       torch.from_numpy(np.array(context, np.float32))).sample
        return float(np.abs(got.permute(0, 2, 3, 1).numpy() - expected).max())


def write_null_context(export_directory: str, null_context: np.ndarray) -> str:
    """Writes an unconditional export's U-Net context (1, num_tokens, cross_attention_dim); returns the path."""
    path = os.path.join(export_directory, NULL_CONTEXT_FILE)
    write_safetensors(path, {"null_context": np.asarray(null_context, np.float32)})
    return path


def load_null_context(export_directory: str) -> np.ndarray:
    """(1, num_tokens, cross_attention_dim) float32: an unconditional export's U-Net context."""
    from safetensors.numpy import load_file

    return load_file(os.path.join(export_directory, NULL_CONTEXT_FILE))["null_context"]


def _stable_diffusion_index() -> dict:
    return {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def _write_json(path: str, content: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


# ---------------------------------------------------------------------------------------------------------
# Evaluators.


def _short(text: str, length: int = 36) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."


class SampleGrid(Evaluator):
    """num_rows x num_columns samples from fixed noise (cell r, c: noise index r * num_columns + c)."""

    writes_samples = True

    def __init__(self, name: str, every: int, method: LDMMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every)
        rows, self.columns = settings.num_rows, settings.num_columns
        self.key = jax.random.key(settings.seed)
        self._sample = method.sample_function
        crop = method.config.data.crop_size
        self.reference: tuple[str, np.ndarray] | None = None
        if method.text:
            prompts = list(settings.prompts)
            if not prompts:
                heldout = method.fixed_batch("heldout", rows, settings.seed)
                prompts, self.reference = heldout["caption"], ("held-out image", heldout["image"])
            self.row_labels = [_short(p) for p in prompts]
            ids = np.repeat(method.tokenize(prompts), self.columns, axis=0)
            self.batch = {"image": np.zeros((len(prompts) * self.columns, crop, crop, 3), np.float32),
                          "input_ids": ids}
        else:
            self.reference = ("training crop", method.fixed_batch("train", rows, settings.seed)["image"])
            self.row_labels = [f"noise {r * self.columns}-{(r + 1) * self.columns - 1}" for r in range(rows)]
            self.batch = {"image": np.zeros((rows * self.columns, crop, crop, 3), np.float32)}

    def __call__(self, model, step, workdir, writer):
        images = np.asarray(self._sample(model, self.batch, self.key))
        images = images.reshape(len(self.row_labels), self.columns, *images.shape[1:])
        columns = ([self.reference] if self.reference is not None else [])
        columns += [(f"sample {c + 1}", images[:, c]) for c in range(self.columns)]
        return write_grid(workdir, step, labelled_grid(columns, self.row_labels), folder=self.name, writer=writer)


class FrechetEvaluator(Evaluator):
    """FID / KID (x100) of samples and of training crops (the reference arm) against held-out crops."""

    def __init__(self, name: str, every: int, method: LDMMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every)
        self.method, self.settings = method, settings
        self._sample = method.sample_function
        self._network = None
        self._reference_features: dict[str, np.ndarray] | None = None
        self.heldout = method.fixed_batch("heldout", settings.num_images, settings.seed)

    def _features(self, images: np.ndarray) -> np.ndarray:
        """(N, 2048) pool3 features, in chunks of batch_size (the last one padded: one compiled shape)."""
        if self._network is None:
            from eval.nets.inception import INPUT_SIZE, load_inception, resize_bilinear

            feature_size = self.settings.feature_size
            network = load_inception(self.settings.inception_weights)
            self._network = (network, ModelFunction(
                lambda net, x: net(x) if feature_size == INPUT_SIZE
                else net(resize_bilinear(x, feature_size), resize=False)))
        network, features_of = self._network
        batch_size = self.settings.batch_size
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(features_of(network, padded))[:len(chunk)])
        return np.concatenate(out).astype(np.float64)

    def _samples(self, model) -> np.ndarray:
        n, size = self.settings.num_images, self.settings.batch_size
        key, crop = jax.random.key(self.settings.seed), self.method.config.data.crop_size
        out = []
        for chunk, start in enumerate(range(0, n, size)):
            batch = {"image": np.zeros((size, crop, crop, 3), np.float32)}
            if self.method.text:  # the held-out captions, cycled
                batch["input_ids"] = self.heldout["input_ids"][np.arange(start, start + size) % n]
            out.append(np.asarray(self._sample(model, batch, jax.random.fold_in(key, chunk))))
        return np.concatenate(out)[:n]

    def __call__(self, model, step, workdir, writer):
        from eval.distribution import fid, kid

        if self._reference_features is None:
            train = self.method.fixed_batch("train", self.settings.num_images, self.settings.seed + 1)
            self._reference_features = {"heldout": self._features(self.heldout["image"]),
                                        "train_images": self._features(train["image"])}
        heldout = self._reference_features["heldout"]
        scores = {}
        for arm, features in (("model", self._features(self._samples(model))),
                              ("train_images", self._reference_features["train_images"])):
            scores[arm] = {"FID": fid(features, heldout), "KIDx100": 100.0 * kid(features, heldout)[0]}
        scores = {"heldout": scores}
        write_scores(workdir, step, scores, higher_is_better={"FID": False, "KIDx100": False}, writer=writer)
        return scores


METHOD = LDMMethod
