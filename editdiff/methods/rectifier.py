"""The rectifier (seed 001, METHODS.md §2): a hypernetwork R that modulates the mid- and up-block convs of a
frozen diffusion U-Net per sample and step, trained for high-fidelity reconstruction.

The model (images in [-1, 1], NHWC; the paper's notation, in the latent space of the base's autoencoder):

    z_0 = s * E(x_0)                          the base's frozen autoencoder (patch autoencoder or SD VAE)
    z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps
    P_t = x_0 estimate of the frozen U-Net's prediction at (z_t, t)            (no gradient)
    Delta_t = R(z_0, P_t, t)                  {conv path: (a, b)}, Delta = a * b per kernel tap (eq. 2)
    theta_hat = theta * (1 + Delta_t)         the modulated U-Net (eq. 1)
    loss = || target - UNet_theta_hat(z_t, t, c) ||_2^2     reconstruction training; only R trains

`target` is the base's own parameterisation (`config.diffusion.prediction_type`, which must be the base's):
for the epsilon-prediction backbones of the paper this is its ||eps - eps_theta_hat(x_t)||^2.

Editing training (`config.objective.kind = "editing"`, the paper's Algorithm 1 and eq. 4-6), usually warm-started
from a reconstruction run (`config.init_from.workdir`): per step x_0, t, eps -> z_t -> the modulated prediction
-> its x_0 estimate P~_t, decoded to an image x~ = D(P~_t), and

    L_edit = lambda_clip * L_direction(x~, t_tar; x_0, t_src) + lambda_recon * L1(x~, x_0)
    L_direction = 1 - cos(E_I(x~) - E_I(x_0), Delta T)         (editdiff/nn/clip_losses.py)

E_I a frozen CLIP image encoder, Delta T the unit text direction from `source_text` to `target_text` averaged
over CLIP's prompt templates (computed once, a frozen value of the model), L1 the mean absolute difference of
the images. CLIP comes from `config.objective.clip`, a transformers CLIPModel directory (both towers and the
tokenizer). At inference the edited image is the rectified reverse pass from the frozen DDIM inversion.

Inference (the paper's, for an input image x_0): DDIM inversion of z_0 with the frozen U-Net to z_T, then the
DDIM reverse pass in which every step runs the frozen U-Net for P_t, R for the offsets and the modulated U-Net
for the update. The frozen arm runs the same reverse pass without R.

The base (`config.pretrained.root`): an export of `configs/ldm.py`, a diffusers DDPMPipeline directory (the
paper's pixel-space DDPM backbones: z = x, no context) or a StableDiffusionPipeline directory
(editdiff/methods/bases.py). The paper's reconstruction is unconditional: a text-conditioned base runs with the
empty caption's encoding as its fixed context c.

`config.model.modulate` names the blocks whose convs R modulates: the paper's ("mid_block", "up_blocks"), or
fewer. `config.model.rectifier` holds RectifierConfig's sizes (editdiff/heads/rectifier.py).

Batch fields (`input_pipeline.captions`): `image` (B, H, W, 3) float32 in [-1, 1].

`--mode=edit`: each photo of `config.edit.input`, at the training photos' scale (short side
`config.data.resize_short_side`, when set) and centre-cropped to a multiple of the model's downsampling (both
logged when they change it), inverted with `config.edit.num_steps` frozen DDIM steps (or, with
`config.edit.strength` < 1, SDEdit: re-noised part of the way) and sampled back (`config.edit.sampler`: DDIM,
or DDPM as the paper's inference) with the rectified U-Net (label `rectified`, or `edited` for an editing run) and with the frozen one (`frozen`), beside
the input as the model saw it (`input`).

`--mode=export`: a self-contained directory: unet/ (the frozen U-Net), null_context/, scheduler/ (the base's),
vae/ (VAE bases), rectifier/ (R for PyTorch, editdiff/interop/rectifier.py) and rectifier.json, whose
torch_max_abs_error is the PyTorch rectified prediction (diffusers U-Net, R's offsets hooked onto its convs)
against the JAX one.

Evaluators (`config.evals.NAME.kind`):

    reconstruction   on `num_images` held-out photos, for every step count N of `num_steps` (the paper's Table
                     1 at 10, 20, 50): invert with N DDIM steps and sample back with N, with the frozen U-Net
                     (arm `frozen`) and with the rectified one (arm `rectified`); set `reconstruction_N`,
                     metrics on [0, 1] images: L1, L2 (mean squared error), SSIM, LPIPS (when
                     `lpips_weights` names torchvision's AlexNet file), and the posterior-mean gap
                     ||Delta e||^2: the mean over the N-step grid's timesteps and a fixed noise of
                     ||eps - eps_hat(z_t, t)||^2 per latent element, eps_hat the noise implied by the
                     prediction at z_t = q_sample(z_0, t, eps) (PDAE's gap between predicted and true posterior
                     mean, in noise units). Also `WORKDIR/NAME/step_N.png`: source, then frozen and rectified
                     reconstructions at each N.
    editing          (editing runs) on `num_images` held-out photos: invert with `num_steps` DDIM steps, sample
                     back with the frozen U-Net (arm `frozen`) and the edited one (arm `edited`); set
                     "SOURCE -> TARGET" (the prompt pair), metrics against the source photo: CLIP_direction
                     cos(E_I(x) - E_I(x_0), Delta T) (the edit's agreement with the text direction), L1,
                     CLIP_image cos(E_I(x), E_I(x_0)) (identity), LPIPS (when `lpips_weights` is given). Grid
                     `WORKDIR/NAME/step_N.png`: source, frozen, edited.
"""
from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.config import (default_diffusion_config, default_sampler_config, diffusion_section,
                                       inversion_settings, loss_settings, sampler_section)
from editdiff.diffusion.losses import diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample, x0_and_eps
from editdiff.diffusion.schedules import schedule_from_config
from editdiff.diffusion.timesteps import denoising_timesteps
from editdiff.heads.rectifier import Rectifier, RectifierConfig
from editdiff.nn import clip_losses
from editdiff.interop import random_clip, transformers_clip
from editdiff.interop.torch_io import CheckpointError, read_config
from editdiff.methods import latents as latents_lib
from editdiff.methods.bases import (SCHEDULER_FILE, autoencoder_factor, base_rule, broadcast_context,
                                    build_autoencoder, frozen_base_state, is_pixel_base, null_context_shape,
                                    read_base)
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.reports import ModelFunction, labelled_grid, write_grid, write_scores
from editdiff.nn.clip import CLIPVisionModel
from editdiff.nn.clip_preprocess import resize_center_crop
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig, modulation_paths
from editdiff.nn.unet2d import UNet2DConfig, UNet2DModel
from editdiff.pretrained import pretrained_path, pretrained_section
from input_pipeline import captions as data

# The paper's: the convs of the middle and up-sampling blocks (`modulation_paths`); `config.model.modulate`
# may name fewer (e.g. ("mid_block",) for an ablation or a small test).
MODULATED_BLOCKS = ("mid_block", "up_blocks")


# ---------------------------------------------------------------------------------------------------------
# Config.


def default_model_config() -> ml_collections.ConfigDict:
    """`config.model`: the rectifier's sizes (RectifierConfig fields; in_channels and image_size derive from
    the base's latent space)."""
    defaults = RectifierConfig()
    return ml_collections.ConfigDict(dict(modulate=MODULATED_BLOCKS, rectifier=ml_collections.ConfigDict(dict(
        stage_blocks=defaults.stage_blocks, base_channels=defaults.base_channels, stem_stride=defaults.stem_stride,
        subnet_channels=defaults.subnet_channels, code_dim=defaults.code_dim,
        time_embedding_dim=defaults.time_embedding_dim, batch_norm_momentum=defaults.batch_norm_momentum,
        a_init_scale=defaults.a_init_scale, leaky_relu_slope=defaults.leaky_relu_slope))))


OBJECTIVES = ("reconstruction", "editing")


def default_objective_config() -> ml_collections.ConfigDict:
    """`config.objective`: what R trains for (module docstring). The paper gives no loss weights; 1 and 1 are
    ours."""
    return ml_collections.ConfigDict(dict(kind="reconstruction", clip="", source_text="", target_text="",
                                          lambda_clip=1.0, lambda_recon=1.0))


EDIT_SAMPLERS = ("ddim", "ddpm")


def default_edit_config() -> ml_collections.ConfigDict:
    """`config.edit` of `--mode=edit` (input, output: the trainer's): the step count of the inversion and of the
    reverse pass (the paper's 50), the reverse sampler ("ddim" deterministic, "ddpm" ancestral as the paper's
    inference), strength (1: from the full DDIM inversion; < 1: SDEdit from the re-noised photo), the seed of
    any noise drawn."""
    return ml_collections.ConfigDict(dict(input="", output="", num_steps=50, sampler="ddim", strength=1.0, seed=0))


def rectifier_diffusion_config() -> ml_collections.ConfigDict:
    """`config.diffusion` with the paper's L2 noise loss (the schedule keys must be the base's)."""
    config = default_diffusion_config()
    config.loss = "l2"
    return config


def rectifier_sampler_config() -> ml_collections.ConfigDict:
    """`config.sampler`: DDIM (inversion and the reverse pass), fixed-point iterations of the inversion."""
    config = default_sampler_config(inversion=True)
    del config["blend_known_region"]
    return config


_RECONSTRUCTION_DEFAULTS = dict(num_steps=(10, 20, 50), num_images=8, batch_size=8, seed=0, lpips_weights="",
                                grid_images=4)


def reconstruction_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "reconstruction" with its defaults."""
    return ml_collections.ConfigDict(dict(kind="reconstruction", every=every,
                                          **{**_RECONSTRUCTION_DEFAULTS, **settings}))


_EDITING_DEFAULTS = dict(num_steps=50, num_images=8, batch_size=8, seed=0, lpips_weights="", grid_images=4)


def editing_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "editing" with its defaults."""
    return ml_collections.ConfigDict(dict(kind="editing", every=every, **{**_EDITING_DEFAULTS, **settings}))


_STEP_COUNTS: checks.Check = ((lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                               and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v)),
                              "a non-empty tuple of step counts >= 1")
_RECONSTRUCTION_CHECKS = {
    "kind": checks.ANY, "every": checks.ANY, "num_steps": _STEP_COUNTS, "num_images": checks.int_at_least(1),
    "batch_size": checks.int_at_least(1), "seed": checks.int_at_least(0), "grid_images": checks.int_at_least(0),
    "lpips_weights": checks.string(),
}
_EDITING_CHECKS = {**_RECONSTRUCTION_CHECKS, "num_steps": checks.int_at_least(1)}
_OBJECTIVE_CHECKS = {"kind": checks.one_of(OBJECTIVES), "clip": checks.string(), "source_text": checks.string(),
                     "target_text": checks.string(), "lambda_clip": checks.number_at_least(0),
                     "lambda_recon": checks.number_at_least(0)}
_EDIT_CHECKS = {"input": checks.ANY, "output": checks.ANY, "num_steps": checks.int_at_least(1),
                "sampler": checks.one_of(EDIT_SAMPLERS), "strength": checks.number_in(0, 1), "seed": checks.int_at_least(0)}


def _edit_rule(config) -> list[str]:
    """SDEdit's strength keeps at least one step of the grid."""
    edit = config.edit
    if edit.strength <= 0 or int(edit.num_steps * edit.strength) < 1:
        return [f"config.edit.strength = {edit.strength!r} is invalid; allowed: in (0, 1] and keeping at least one of "
                f"config.edit.num_steps = {edit.num_steps} steps (int(num_steps * strength) >= 1)"]
    return []
_MODULATE: checks.Check = ((lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                            and all(b in MODULATED_BLOCKS for b in v)),
                           f"a non-empty tuple of {', '.join(repr(b) for b in MODULATED_BLOCKS)}")


def _sampler_section() -> checks.Section:
    shared = sampler_section(inversion=True)
    table = {key: check for key, check in shared.checks.items() if key != "blend_known_region"}
    ddim_only = (lambda config: [] if config.sampler.name == "ddim" else [
        f"config.sampler.name = {config.sampler.name!r} is invalid; allowed: 'ddim' (the rectifier inverts "
        "with DDIM and samples back on the same grid)"])
    return checks.Section("sampler", table, rules=(*shared.rules, ddim_only))


def _rectifier_rule(config) -> list[str]:
    """config.model.rectifier holds RectifierConfig fields with values it accepts (its own checks, one place)."""
    fields = config.model.rectifier
    if not isinstance(fields, ml_collections.ConfigDict):
        return [f"config.model.rectifier = {fields!r} is invalid; allowed: a ConfigDict of RectifierConfig fields"]
    try:
        RectifierConfig(**fields.to_dict())
    except (TypeError, ValueError) as error:
        return [f"config.model.rectifier: {error}"]
    return []


def _evals_rule(config) -> list[str]:
    problems = []
    for name, entry in config.evals.items():
        kind = entry.get("kind") if isinstance(entry, ml_collections.ConfigDict) else None
        if kind == "reconstruction":
            problems += checks.Section(f"evals.{name}", _RECONSTRUCTION_CHECKS).problems(config)
        if kind == "editing":
            problems += checks.Section(f"evals.{name}", _EDITING_CHECKS).problems(config)
            if config.objective.kind != "editing":
                problems.append(f"config.evals.{name}.kind = 'editing' is invalid here; allowed: with "
                                "config.objective.kind = 'editing' (a reconstruction R edits nothing)")
    return problems


def _objective_rule(config) -> list[str]:
    """An editing objective names a CLIPModel directory and two different, non-empty texts."""
    objective = config.objective
    if objective.kind != "editing":
        return []
    problems, clip = [], objective.clip
    reason = "empty" if not clip else None
    if clip:
        try:
            transformers_clip.read_vision_config(clip)
            transformers_clip.load_clip_tokenizer(clip)
        except (CheckpointError, OSError, ValueError) as error:
            reason = str(error)
    if reason:
        problems.append(f"config.objective.clip = {clip!r} is invalid; allowed: a transformers CLIPModel directory "
                        f"(config.json of both towers, the weights, the tokenizer), which an editing run needs for "
                        f"its CLIP image and text encoders ({reason})")
    for key in ("source_text", "target_text"):
        if not objective[key].strip():
            problems.append(f"config.objective.{key} = {objective[key]!r} is invalid; allowed: a non-empty text "
                            "(e.g. source_text='photo', target_text='sketch')")
    if objective.source_text.strip() and objective.source_text == objective.target_text:
        problems.append(f"config.objective.target_text = {objective.target_text!r} is invalid; allowed: a text "
                        "other than config.objective.source_text (the edit's direction)")
    if objective.lambda_clip + objective.lambda_recon <= 0:
        problems.append("config.objective.lambda_clip = lambda_recon = 0 is invalid; allowed: a positive weight")
    return problems


# ---------------------------------------------------------------------------------------------------------
# The model.


class RectifiedModel(latents_lib.LatentModel):
    """The base's frozen autoencoder, U-Net and null context, and the trainable rectifier R; for an editing
    objective also the frozen CLIP image encoder and text direction Delta T (P,)."""

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel | UNet2DModel,
                 null_context: nnx.Param | None, rectifier: Rectifier, clip_vision: CLIPVisionModel | None = None,
                 text_direction: nnx.Param | None = None):
        self.autoencoder = autoencoder
        self.unet = unet
        self.null_context = null_context
        self.rectifier = rectifier
        self.clip_vision = clip_vision
        self.text_direction = text_direction

    def _unet(self, z_t: jax.Array, t: jax.Array, modulation=None) -> jax.Array:
        """The U-Net at (z_t, t): with the null context (an ldm base), or a UNet2DModel (no context)."""
        if self.null_context is None:
            return self.unet(z_t, t, modulation=modulation).astype(jnp.float32)
        return self.unet(z_t, t, broadcast_context(self.null_context, z_t.shape[0]),
                         modulation=modulation).astype(jnp.float32)

    def frozen_prediction(self, z_t: jax.Array, t: jax.Array) -> jax.Array:
        """The frozen U-Net's prediction (the schedule's type) at (z_t (B, h, w, C), t (B,)), float32."""
        return self._unet(z_t, t)

    def rectified_prediction(self, schedule, z_t: jax.Array, t: jax.Array, z_0: jax.Array) -> jax.Array:
        """The modulated U-Net's prediction: P_t, the x_0 estimate of the frozen prediction under `schedule`
        (no gradient), Delta_t = R(z_0, P_t, t), then UNet_theta_hat(z_t, t). All (B, h, w, C) float32; t (B,)."""
        frozen = jax.lax.stop_gradient(self.frozen_prediction(z_t, t))
        estimate, _ = x0_and_eps(schedule, z_t, t, frozen)
        return self._unet(z_t, t, self.rectifier(z_0, estimate, t))


# ---------------------------------------------------------------------------------------------------------
# The method.


class RectifierMethod(Method):
    """Reconstruction training of the rectifier on a frozen ldm base (module docstring)."""

    evaluator_kinds = ("reconstruction", "editing")

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        base = [checks.Section("model", {"rectifier": checks.ANY, "modulate": _MODULATE}),
                checks.Section("objective", _OBJECTIVE_CHECKS), checks.Section("edit", _EDIT_CHECKS, rules=(_edit_rule,)),
                diffusion_section(), _sampler_section(), *data.image_data_sections(),
                pretrained_section()]
        rules = ([] if any(s.problems(config) for s in base)
                 else [_rectifier_rule, base_rule, _objective_rule, _evals_rule])
        return [*base, checks.Section("", {}, closed=False, rules=tuple(rules))]

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.schedule = schedule_from_config(config.diffusion)
        self.dtype = jnp.dtype(config.compute_dtype)
        self.base = read_base(config.pretrained.root)
        self.pixel = is_pixel_base(self.base)
        unet_config = read_config(pretrained_path(config, "unet"))
        self.unet_config = (UNet2DConfig if self.pixel else UNetConfig).from_diffusers(unet_config)
        self.null_context_shape = None if self.pixel else null_context_shape(config, self.base)
        self.editing = config.objective.kind == "editing"
        self._text_direction = None
        edit = config.edit
        self._edit = ModelFunction(lambda model, images: self.reconstruct(
            model, images, edit.num_steps, ARMS, sampler=edit.sampler, strength=edit.strength,
            key=jax.random.key(edit.seed)))
        if self.editing:
            # CLIPImageProcessor's resize and centre crop to the tower's own resolution.
            self.clip_preprocess = functools.partial(
                resize_center_crop, size=transformers_clip.read_vision_config(config.objective.clip).image_size)
            note = random_clip.stand_in_note(config.objective.clip)
            if note:
                logging.warning("config.objective.clip = %s is %s", config.objective.clip, note)

    def init_model(self, rngs: nnx.Rngs) -> RectifiedModel:
        autoencoder = build_autoencoder(self.config, self.base, rngs=rngs, dtype=self.dtype)
        if self.pixel:
            unet, null_context = UNet2DModel(self.unet_config, rngs=rngs, dtype=self.dtype), None
        else:
            unet = UNet2DConditionModel(self.unet_config, rngs=rngs, dtype=self.dtype)
            # The base's null context or empty-caption encoding (its values come from pretrained_state).
            null_context = nnx.Param(jnp.zeros(self.null_context_shape, jnp.float32))
        factor = autoencoder.downsample_factor
        rectifier_config = RectifierConfig(**self.config.model.rectifier.to_dict(),
                                           in_channels=2 * self.unet_config.in_channels,
                                           image_size=self.config.data.crop_size // factor)
        layers = [(path, shape) for path, shape in modulation_paths(unet) if path[0] in self.config.model.modulate]
        rectifier = Rectifier(rectifier_config, layers, rngs=rngs, dtype=self.dtype)
        if not self.editing:
            return RectifiedModel(autoencoder, unet, null_context, rectifier)
        vision_config = transformers_clip.read_vision_config(self.config.objective.clip)
        clip_vision = CLIPVisionModel(vision_config, rngs=rngs, dtype=self.dtype)
        text_direction = nnx.Param(jnp.zeros((vision_config.projection_dim,), jnp.float32))
        return RectifiedModel(autoencoder, unet, null_context, rectifier, clip_vision, text_direction)

    def pretrained_state(self) -> FlatState:
        state = dict(frozen_base_state(self.config, self.base))
        if self.editing:
            vision = transformers_clip.load_clip_vision(self.config.objective.clip)
            state.update({("clip_vision", *p): np.asarray(v[...])
                          for p, v in nnx.to_flat_state(nnx.state(vision, nnx.Param))})
            state[("text_direction",)] = self.text_direction()
        return state

    def text_direction(self) -> np.ndarray:
        """Delta T (P,): the unit CLIP text direction from objective.source_text to target_text, averaged over
        CLIP's prompt templates (computed once)."""
        if self._text_direction is None:
            objective = self.config.objective
            clip = objective.clip
            tokenizer = transformers_clip.load_clip_tokenizer(clip)
            text_model = transformers_clip.load_clip_text(clip)
            length = text_model.config.max_position_embeddings
            ids = [jnp.asarray(transformers_clip.tokenize(tokenizer, clip_losses.fill_templates(text), length))
                   for text in (objective.source_text, objective.target_text)]
            self._text_direction = np.asarray(clip_losses.text_direction(text_model, *ids))
        return self._text_direction

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.PathContains("rectifier"))

    # -- data -----------------------------------------------------------------------------------------

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        return data.ImageBatches(self.config.data, start_step=start_step, process_index=process_index,
                                 process_count=process_count)

    # -- training and inference -----------------------------------------------------------------------

    def loss(self, model: RectifiedModel, batch: Batch, rng: jax.Array):
        """Reconstruction: the noise loss of eq. 1. Editing: Algorithm 1's L_edit (module docstring)."""
        t_key, noise_key = jax.random.split(rng)
        z_0 = model.encode(batch["image"])
        t = sample_timesteps(t_key, z_0.shape[0], self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, z_0.shape, jnp.float32)
        z_t = q_sample(self.schedule, z_0, t, noise)
        prediction = model.rectified_prediction(self.schedule, z_t, t, z_0)
        if not self.editing:
            loss = diffusion_loss(self.schedule, prediction, z_0, noise, t, **loss_settings(self.config.diffusion))
            return loss, {}
        estimate, _ = x0_and_eps(self.schedule, z_t, t, prediction)  # P~_t
        edited = model.decode(estimate)
        direction = clip_losses.directional_clip_loss(model.clip_vision, batch["image"], edited,
                                                      model.text_direction[...], self.clip_preprocess)
        l1 = jnp.mean(jnp.abs(edited - batch["image"]), axis=(1, 2, 3))
        objective = self.config.objective
        loss = jnp.mean(objective.lambda_clip * direction + objective.lambda_recon * l1)
        return loss, {"direction_loss": jnp.mean(direction), "l1": jnp.mean(l1)}

    def reconstruct(self, model: RectifiedModel, images: jax.Array, num_steps: int,
                    arms: tuple[str, ...] = ("rectified",), *, sampler: str = "ddim", strength: float = 1.0,
                    key: jax.Array | None = None) -> dict[str, jax.Array]:
        """The reverse pass on the `num_steps`-step grid per arm, "rectified" (the modulated U-Net) and/or
        "frozen", from `images` (B, H, W, 3): with strength 1, from their DDIM inversion with the frozen U-Net
        (once, shared by the arms); with strength < 1, SDEdit: from the clean latent re-noised (noise from `key`)
        to the first of the last int(num_steps * strength) steps. `sampler` "ddim" (deterministic) or "ddpm"
        (ancestral, the paper's inference; step noise from `key`, the same for every arm).
        {arm: (B, H, W, 3) in [-1, 1]}."""
        z_0 = model.encode(images)
        noise_key, step_key = jax.random.split(key if key is not None else jax.random.key(0))
        if strength == 1.0:
            settings = {**inversion_settings(self.config.sampler), "num_steps": num_steps}
            start = dict(x_T=samplers.ddim_invert(model.frozen_prediction, self.schedule, z_0, **settings))
        else:
            start = dict(x_T=jax.random.normal(noise_key, z_0.shape, jnp.float32), init_latent=z_0, strength=strength)
        model_fns = {"frozen": model.frozen_prediction,
                     "rectified": lambda z, t: model.rectified_prediction(self.schedule, z, t, z_0)}
        s = self.config.sampler
        grid = dict(num_steps=num_steps, spacing=s.spacing, steps_offset=s.steps_offset)

        def reverse(model_fn):
            if sampler == "ddpm":
                return samplers.ddpm_sample(model_fn, self.schedule, key=step_key, **start, **grid)
            return samplers.ddim_sample(model_fn, self.schedule, eta=0.0, set_alpha_to_one=s.set_alpha_to_one,
                                        **start, **grid)

        return {arm: model.decode(reverse(model_fns[arm])) for arm in arms}

    def sample(self, model: RectifiedModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """The rectified reconstructions of `image` with the sampler's step count."""
        return self.reconstruct(model, batch["image"], self.config.sampler.num_steps)["rectified"]

    def posterior_gap(self, model: RectifiedModel, images: jax.Array, num_steps: int, rectified: bool,
                      key: jax.Array) -> jax.Array:
        """||Delta e||^2 per image (B,): the mean over the num_steps-step grid of ||eps - eps_hat(z_t, t)||^2
        per latent element, one noise eps (from `key`) per image."""
        z_0 = model.encode(images)
        noise = jax.random.normal(key, z_0.shape, jnp.float32)
        s = self.config.sampler
        grid = denoising_timesteps(self.schedule.num_train_timesteps, num_steps, s.spacing, s.steps_offset)

        def gap_at(t_value):
            t = jnp.full((z_0.shape[0],), t_value, jnp.int32)
            z_t = q_sample(self.schedule, z_0, t, noise)
            prediction = (model.rectified_prediction(self.schedule, z_t, t, z_0) if rectified
                          else model.frozen_prediction(z_t, t))
            _, eps = x0_and_eps(self.schedule, z_t, t, prediction)
            return jnp.mean(jnp.square(eps - noise).reshape(z_0.shape[0], -1), axis=1)

        return jnp.mean(jax.lax.map(gap_at, jnp.asarray(grid, jnp.int32)), axis=0)

    def export(self, model: RectifiedModel, directory: str) -> list[str]:
        """`unet/` (the frozen U-Net), `null_context/` (ldm bases), `scheduler/` (the base's), `vae/` (VAE bases),
        `rectifier/` (R for PyTorch, editdiff/interop/rectifier.py) and `rectifier.json` (modulate, autoencoder,
        and torch_max_abs_error: the PyTorch rectified prediction against the JAX one); returns the paths written."""
        import shutil

        from editdiff.interop.diffusers_unet import export_unet, export_unet2d
        from editdiff.interop.rectifier import export_rectifier, exported_prediction_error
        from editdiff.methods.ldm import load_null_context, write_null_context

        if jax.process_index() != 0:
            return []
        unet, rectifier = os.path.join(directory, "unet"), os.path.join(directory, "rectifier")
        scheduler = os.path.join(directory, SCHEDULER_FILE)
        written = [unet, scheduler, rectifier]
        (export_unet2d if self.pixel else export_unet)(model.unet, unet)
        null_context = None
        if not self.pixel:
            written.append(write_null_context(directory, np.asarray(model.null_context[...])))
            null_context = load_null_context(directory)
        os.makedirs(os.path.dirname(scheduler), exist_ok=True)
        shutil.copyfile(os.path.join(self.config.pretrained.root, SCHEDULER_FILE), scheduler)
        export_rectifier(model.rectifier, rectifier, model.unet)
        if self.base["autoencoder"]["kind"] == "vae":  # the autoencoder entry names this subfolder
            from editdiff.interop.diffusers_vae import export_vae

            written.append(os.path.join(directory, "vae"))
            export_vae(model.autoencoder, written[-1])
        error = exported_prediction_error(model, self.schedule, unet_directory=unet, rectifier_directory=rectifier,
                                          scheduler_directory=os.path.dirname(scheduler), null_context=null_context)
        if error is not None:
            logging.info("Exported rectified prediction in PyTorch vs JAX: max abs error %.2e", error)
        written.append(os.path.join(directory, "rectifier.json"))
        with open(written[-1], "w") as f:
            json.dump({"method": "rectifier", "modulate": list(self.config.model.modulate),
                       "autoencoder": self.base["autoencoder"], "unet_class": type(model.unet).__name__,
                       "scaling_factor": float(model.autoencoder.scaling_factor), "torch_max_abs_error": error},
                      f, indent=2)
        return written

    # -- evaluation -----------------------------------------------------------------------------------

    def edit(self, model: RectifiedModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """The rectified (or edited) and the frozen reverse pass from the frozen DDIM inversion of `image`
        (H, W, 3): at the training photos' scale (short side config.data.resize_short_side, when set), centre-
        cropped to a multiple of the latent U-Net's downsampling (module docstring)."""
        cropped = latents_lib.fit_image(image, self.config.data.resize_short_side, self.size_multiple)
        results = {arm: np.asarray(images[0]) for arm, images in self._edit(model, jnp.asarray(cropped[None])).items()}
        return {"edited" if self.editing else "rectified": results["rectified"], "frozen": results["frozen"],
                "input": cropped}

    @functools.cached_property
    def size_multiple(self) -> int:
        """The image sizes the model takes are multiples of this: the autoencoder's factor times the U-Net's."""
        return autoencoder_factor(self.config, self.base) * 2 ** (len(self.unet_config.block_out_channels) - 1)

    def evaluators(self) -> list[Evaluator]:
        kinds = {"reconstruction": ReconstructionEvaluator, "editing": EditingEvaluator}
        return [kinds[entry.kind](name, entry.every, self, entry) for name, entry in self.config.evals.items()]


# ---------------------------------------------------------------------------------------------------------
# Evaluators.


ARMS = ("frozen", "rectified")


class _HeldOutEvaluator(Evaluator):
    """An evaluator on the entry's held-out photos (N, H, W, 3), in chunks of its batch size, scored against
    them with the pixel metrics."""

    writes_samples = True

    def __init__(self, name: str, every: int, method: RectifierMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every)
        self.method, self.settings = method, settings
        self.images = data.fixed_examples(method.config.data, "heldout", settings.num_images, settings.seed,
                                          captioned=False)["image"]
        self._lpips = None

    def _write_grid(self, columns: list[tuple[str, np.ndarray]], workdir: str, step: int, writer) -> None:
        """The labelled grid of `columns` [(header, images (N, H, W, 3))] as WORKDIR/NAME/step_N.png."""
        if self.settings.grid_images:
            labels = [f"held-out {i}" for i in range(len(columns[0][1]))]
            write_grid(workdir, step, labelled_grid(columns, labels), folder=self.name, writer=writer)

    def _chunks(self):
        size = self.settings.batch_size
        for start in range(0, len(self.images), size):
            chunk = self.images[start:start + size]
            yield len(chunk), np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])

    def _metrics(self, reconstructed: np.ndarray) -> dict[str, float]:
        from eval import metrics as pixel

        pred, target = (jnp.asarray(reconstructed) + 1) / 2, (jnp.asarray(self.images) + 1) / 2
        scores = {"L1": float(jnp.mean(pixel.l1(pred, target))), "L2": float(jnp.mean(pixel.mse(pred, target))),
                  "SSIM": float(jnp.mean(pixel.ssim(pred, target, 1.0)))}
        if self.settings.lpips_weights:
            if self._lpips is None:
                from eval.lpips import load_lpips

                network = load_lpips(self.settings.lpips_weights)
                self._lpips = (network, ModelFunction(lambda net, a, b: net(a, b)))
            network, distance = self._lpips
            scores["LPIPS"] = float(jnp.mean(distance(network, jnp.asarray(reconstructed), jnp.asarray(self.images))))
        return scores


class ReconstructionEvaluator(_HeldOutEvaluator):
    """The paper's Table 1 on held-out photos at each step count, frozen beside rectified (module docstring)."""

    def __init__(self, name: str, every: int, method: RectifierMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every, method, settings)
        # One program per step count (one inversion shared by both arms): {arm: (reconstructions (B, H, W, 3),
        # gaps (B,))}.
        self._evaluate = {n: ModelFunction(
            lambda model, images, key, n=n: {
                arm: (images_of_arm, method.posterior_gap(model, images, n, arm == "rectified", key))
                for arm, images_of_arm in method.reconstruct(model, images, n, ARMS).items()})
            for n in settings.num_steps}

    def __call__(self, model, step, workdir, writer):
        key = jax.random.key(self.settings.seed)
        scores, columns = {}, [("source", self.images[:self.settings.grid_images])]
        for n in self.settings.num_steps:
            scores[f"reconstruction_{n}"] = {}
            results = [(count, self._evaluate[n](model, chunk, jax.random.fold_in(key, index)))
                       for index, (count, chunk) in enumerate(self._chunks())]
            for arm in ARMS:
                reconstructed = np.concatenate([np.asarray(by_arm[arm][0])[:count] for count, by_arm in results])
                gaps = [np.asarray(by_arm[arm][1])[:count] for count, by_arm in results]
                scores[f"reconstruction_{n}"][arm] = {**self._metrics(reconstructed),
                                                      "posterior_gap": float(np.mean(np.concatenate(gaps)))}
                columns.append((f"{arm} {n}", reconstructed[:self.settings.grid_images]))
        higher = {"L1": False, "L2": False, "SSIM": True, "LPIPS": False, "posterior_gap": False}
        write_scores(workdir, step, scores, higher_is_better=higher, writer=writer)
        self._write_grid(columns, workdir, step, writer)
        return scores


EDITING_ARMS = {"frozen": "frozen", "rectified": "edited"}  # reconstruct's arm -> the editing table's


class EditingEvaluator(_HeldOutEvaluator):
    """The edit of held-out photos by the prompt pair, frozen reconstruction beside edited (module docstring)."""

    def __init__(self, name: str, every: int, method: RectifierMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every, method, settings)
        objective = method.config.objective
        self.set_name = f"{objective.source_text} -> {objective.target_text}"

        def evaluate(model, images):
            """{arm: (images (B, H, W, 3), CLIP_direction (B,), CLIP_image (B,))}."""
            results = method.reconstruct(model, images, settings.num_steps, ARMS)
            embedded = clip_losses.image_embeddings(model.clip_vision, jnp.concatenate(
                [images, *results.values()], axis=0), method.clip_preprocess)
            source, *arms = jnp.split(embedded, 1 + len(results), axis=0)
            return {EDITING_ARMS[arm]: (edited, 1.0 - clip_losses.direction_loss(e - source, model.text_direction[...]),
                                        clip_losses.cosine_similarity(e, source))
                    for (arm, edited), e in zip(results.items(), arms)}

        self._evaluate = ModelFunction(evaluate)

    def __call__(self, model, step, workdir, writer):
        results = [(count, self._evaluate(model, chunk)) for count, chunk in self._chunks()]
        scores, columns = {self.set_name: {}}, [("source", self.images[:self.settings.grid_images])]
        for arm in EDITING_ARMS.values():
            edited, direction, identity = (np.concatenate([np.asarray(by_arm[arm][i])[:count] for count, by_arm in results])
                                           for i in range(3))
            scores[self.set_name][arm] = {"CLIP_direction": float(np.mean(direction)), **self._metrics(edited),
                                          "CLIP_image": float(np.mean(identity))}
            columns.append((arm, edited[:self.settings.grid_images]))
        higher = {"CLIP_direction": True, "CLIP_image": True, "L1": False, "L2": False, "SSIM": True, "LPIPS": False}
        write_scores(workdir, step, scores, higher_is_better=higher, writer=writer)
        self._write_grid(columns, workdir, step, writer)
        return scores


METHOD = RectifierMethod
