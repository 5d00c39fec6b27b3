"""Diff-Plugin (seed 002, METHODS.md §3): one Task-Plugin trained on a frozen latent diffusion model.

The model (images in [-1, 1], NHWC), for a clean photo x and its degraded version x~ (the task's degradation,
`config.plugin.task`):

    z_0 = s * E(x)                              the base's frozen autoencoder (SD VAE or patch autoencoder)
    c = s * mean(E(x~))                         the degraded input's latent: the SCB's input and the start
    F = CLIP_vision(x~).patch_tokens            the frozen CLIP vision tower (`config.pretrained.image_encoder`),
                                                CLIPImageProcessor's resize + centre crop at training and
                                                inference alike
    F^p, F^s = TaskPlugin(F, c, t)              prompt tokens and the first skips' residuals
                                                (editdiff/heads/task_plugin.py)
    loss = || target - UNet(z_t, t, F^p; down_residuals = F^s) ||_2^2      only the plugin trains

`target` is the base's parameterisation (epsilon for SD: the paper's noise loss). The frozen U-Net keeps the
base's context only for the `frozen` arm; with the plugin, F^p is its whole cross-attention context.

Inference as the authors' code: `config.sampler` (UniPC, 20 steps, no guidance), starting from c re-noised
to the grid's first timestep (`config.plugin.start = "input"`; t = 999 on the 20-step linspace grid of 1000,
the authors' t >= 960), or from pure noise ("noise"; "auto": noise for low light and highlight removal, the
input otherwise, as the authors do). `config.plugin.strength` < 1 starts part of the way (SDEdit).

The base (`config.pretrained.root`, editdiff/methods/bases.py): an export of `configs/ldm.py` or a
StableDiffusionPipeline directory (SD-1.4 in the paper); a pixel-space UNet2DModel has no cross-attention.

Batch fields: `image` (B, H, W, 3) the clean target, `source` (B, H, W, 3) the degraded input, both in [-1, 1]
(`input_pipeline.captions.ImageBatches` with the task's degradation, or a paired-folder source).

Evaluator `restoration` (`config.evals.NAME.kind`): on `num_images` held-out examples of the task (degraded
as in training, each with its own fixed seed), set = the task ("TASK @ strength S" for a partial start), arms `input` (the degraded image returned
unchanged: the do-nothing answer), `frozen` (the frozen U-Net with the base's context, same sampler, start and
noise) and `plugin`; PSNR and SSIM on [0, 1] images against the clean photo. Grid `WORKDIR/NAME/step_N.png`:
degraded, frozen, plugin, clean.

`--mode=edit`: each photo of `config.edit.input` at the training scale (short side
`config.data.resize_short_side`, centre-cropped to the model's multiple) restored by the plugin (label the
task), beside the frozen model (`frozen`) and the input (`input`). `--mode=export`: the plugin for PyTorch
(editdiff/interop/task_plugin.py) and plugin.json, whose torch_max_abs_error is the PyTorch plugin prediction
(transformers CLIP, TorchTaskPlugin, the diffusers U-Net) against the JAX one.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.config import (default_diffusion_config, default_sampler_config, diffusion_section,
                                       loss_settings, sampler_section, sampler_settings)
from editdiff.diffusion.losses import diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample
from editdiff.diffusion.schedules import schedule_from_config
from editdiff.heads.task_plugin import TaskPlugin, TaskPluginConfig, down_residuals_for
from editdiff.interop import random_clip, transformers_clip
from editdiff.interop.torch_io import CheckpointError, read_config
from editdiff.methods import latents as latents_lib
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.bases import (autoencoder_factor, base_rule, broadcast_context, build_autoencoder,
                                    frozen_base_state, null_context_shape, read_base)
from editdiff.methods.reports import ModelFunction, chunks, labelled_grid, write_grid, write_scores
from editdiff.nn.clip import CLIPVisionConfig, CLIPVisionModel
from editdiff.nn.clip_preprocess import resize_center_crop
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.pretrained import pretrained_path, pretrained_section
from input_pipeline import captions as data
from input_pipeline.degradations import DEGRADATIONS, degrade

TASKS = tuple(DEGRADATIONS)
# The authors start these from pure noise: their inputs' latents are too dark / too saturated to keep.
PURE_NOISE_TASKS = ("lowlight", "highlight")
STARTS = ("auto", "input", "noise")
ATTENTION_IMPLEMENTATIONS = ("", "xla", "cudnn")


# ---------------------------------------------------------------------------------------------------------
# Config.


def default_inference_config() -> ml_collections.ConfigDict:
    """Where a plugin's sampling starts (module docstring) and SDEdit's strength (1: the whole grid)."""
    return ml_collections.ConfigDict(dict(start="auto", strength=1.0))


def default_plugin_config(task: str = "derain") -> ml_collections.ConfigDict:
    """`config.plugin`: the task (its degradation and its evaluation set) and `default_inference_config`."""
    return ml_collections.ConfigDict(dict(task=task, **default_inference_config()))


def default_model_config() -> ml_collections.ConfigDict:
    """`config.model`: the TPB's hidden width (0: the CLIP tower's width, the authors'), its LeakyReLU slope
    (torch's default), the attention implementation ("" XLA's choice | "xla" | "cudnn")."""
    return ml_collections.ConfigDict(dict(prompt_width=0, leaky_relu_slope=0.01, attention_implementation=""))


def plugin_diffusion_config() -> ml_collections.ConfigDict:
    """`config.diffusion` with the paper's L2 noise loss (the schedule keys must be the base's)."""
    config = default_diffusion_config()
    config.loss = "l2"
    return config


def plugin_sampler_config() -> ml_collections.ConfigDict:
    """`config.sampler`: the authors' UniPC with 20 steps on diffusers' default linspace grid."""
    config = default_sampler_config()
    del config["blend_known_region"]
    config.update(name="unipc", num_steps=20, spacing="linspace")
    return config


def default_edit_config() -> ml_collections.ConfigDict:
    """`config.edit` of `--mode=edit` (input, output: the trainer's) and the seed of the start noise."""
    return ml_collections.ConfigDict(dict(input="", output="", seed=0))


_RESTORATION_DEFAULTS = dict(num_images=8, batch_size=8, seed=0, grid_images=4)


def restoration_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "restoration" with its defaults."""
    return ml_collections.ConfigDict(dict(kind="restoration", every=every, **{**_RESTORATION_DEFAULTS, **settings}))


_RESTORATION_CHECKS = {"kind": checks.ANY, "every": checks.ANY, "num_images": checks.int_at_least(1),
                       "batch_size": checks.int_at_least(1), "seed": checks.int_at_least(0),
                       "grid_images": checks.int_at_least(0)}
INFERENCE_CHECKS = {"start": checks.one_of(STARTS),
                    "strength": ((lambda v: checks.is_number(v) and 0 < v <= 1), "a number in (0, 1]")}
_PLUGIN_CHECKS = {"task": checks.one_of(TASKS), **INFERENCE_CHECKS}
_MODEL_CHECKS = {"prompt_width": checks.int_at_least(0), "leaky_relu_slope": checks.number_at_least(0),
                 "attention_implementation": checks.one_of(ATTENTION_IMPLEMENTATIONS)}
_EDIT_CHECKS = {"input": checks.ANY, "output": checks.ANY, "seed": checks.int_at_least(0)}


def sampler_section_without_blend() -> checks.Section:
    """`config.sampler`'s checks (`editdiff.diffusion.config`) without the known-region blend: nothing of the
    output is known."""
    shared = sampler_section()
    table = {key: check for key, check in shared.checks.items() if key != "blend_known_region"}
    return checks.Section("sampler", table, rules=shared.rules)


def clip_rule(config) -> list[str]:
    """config.pretrained.image_encoder names a transformers CLIP (vision) directory."""
    directory = pretrained_path(config, "image_encoder")
    reason = "empty"
    if directory:
        try:
            transformers_clip.read_vision_config(directory)
            return []
        except (CheckpointError, OSError, ValueError, KeyError) as error:
            reason = str(error)
    return [f"config.pretrained.image_encoder = {config.pretrained.image_encoder!r} is invalid; allowed: a "
            f"transformers CLIP vision (or CLIPModel) directory, whose patch tokens the plugin reads ({reason}; "
            "without downloads: python -m editdiff.interop.random_clip DIR writes a random stand-in)"]


def evals_rule(kind: str, table: dict[str, checks.Check]):
    """The rule checking every `config.evals.NAME` of `kind` against `table` (the plugin's and the selector's
    evaluator settings)."""

    def rule(config) -> list[str]:
        return [problem for name, entry in config.evals.items()
                if isinstance(entry, ml_collections.ConfigDict) and entry.get("kind") == kind
                for problem in checks.Section(f"evals.{name}", table).problems(config)]

    return rule


def base_sections(config: ml_collections.ConfigDict) -> list[checks.Section]:
    """The sections a plugin model's frozen parts need (shared by the selector): schedule, sampler, data, the
    base (an ldm export or SD pipeline with this schedule) and the CLIP vision tower."""
    return [diffusion_section(), sampler_section_without_blend(), *data.image_data_sections(),
            pretrained_section(), checks.Section("model", _MODEL_CHECKS),
            checks.Section("edit", _EDIT_CHECKS, closed=False)]


def base_rules() -> tuple:
    return (functools.partial(base_rule, pixel=False), clip_rule)


def start_for(config: ml_collections.ConfigDict, task: str) -> str:
    """"input" or "noise": config.plugin.start, with "auto" resolved per task (module docstring)."""
    start = config.plugin.start
    if start == "auto":
        return "noise" if task in PURE_NOISE_TASKS else "input"
    return start


# ---------------------------------------------------------------------------------------------------------
# The model.


class PluginModel(latents_lib.LatentModel):
    """The base's frozen autoencoder, U-Net and context, the frozen CLIP vision tower, and task plugins by name
    (one trainable plugin in a plugin run; several frozen ones under the selector)."""

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel, null_context: nnx.Param,
                 clip_vision: CLIPVisionModel, plugins: dict[str, TaskPlugin]):
        self.autoencoder = autoencoder
        self.unet = unet
        self.null_context = null_context
        self.clip_vision = clip_vision
        self.plugins = nnx.Dict(plugins)

    def clip_tokens(self, images: jax.Array) -> jax.Array:
        """F (B, N, clip_width): the frozen CLIP tower's patch tokens of (B, H, W, 3) images in [-1, 1], after
        CLIPImageProcessor's resize and centre crop to the tower's resolution. No gradient."""
        size = self.clip_vision.config.image_size
        return jax.lax.stop_gradient(self.clip_vision(resize_center_crop(images, size)).patch_tokens)

    def frozen_prediction(self, z_t: jax.Array, t: jax.Array) -> jax.Array:
        """The frozen U-Net with the base's context at (z_t (B, h, w, C), t (B,)): float32, the schedule's type."""
        return self.unet(z_t, t, broadcast_context(self.null_context, z_t.shape[0])).astype(jnp.float32)

    def plugin_prediction(self, task: str, z_t: jax.Array, t: jax.Array, tokens: jax.Array,
                          condition: jax.Array) -> jax.Array:
        """The frozen U-Net with plugin `task`: F^p as its context, F^s on its first skips. z_t, condition (the
        degraded input's latent c) (B, h, w, C); t (B,); tokens F (B, N, clip_width). Float32."""
        prompt, residuals = self.plugins[task](tokens, condition, t)
        return self.unet(z_t, t, prompt, down_residuals=down_residuals_for(self.unet.config, residuals)
                         ).astype(jnp.float32)


def restore(model: PluginModel, schedule, sampler_config: ml_collections.ConfigDict, images: jax.Array,
            key: jax.Array, *, task: str | None, start: str, strength: float = 1.0,
            num_steps: int | None = None) -> jax.Array:
    """One restoration pass of (B, H, W, 3) images in [-1, 1] -> (B, H, W, 3): the sampler of `sampler_config`
    (`num_steps` overriding its step count) from the images' latent re-noised (start "input", to `strength`)
    or from pure noise ("noise"), with plugin `task`, or with the frozen U-Net and the base's context (task
    None). The start noise comes from `key`: every arm drawn with the same key starts alike."""
    condition = model.encode(images)
    noise = jax.random.normal(key, condition.shape, jnp.float32)
    if task is None:
        model_fn = model.frozen_prediction
    else:
        tokens = model.clip_tokens(images)  # the prompt reads the input once; every step reuses it

        def model_fn(z, t):
            return model.plugin_prediction(task, z, t, tokens, condition)
    settings = sampler_settings(sampler_config)
    if num_steps is not None:
        settings["num_steps"] = num_steps
    if start == "input":
        settings |= dict(init_latent=condition, strength=strength)
    sampler = samplers.sampler_by_name(sampler_config.name)
    step_key = jax.random.fold_in(key, 1)  # DDPM's per-step noise; the solvers draw none
    return model.decode(sampler(model_fn, schedule, noise, step_key, **settings))


def run_chain(model: PluginModel, schedule, sampler_config: ml_collections.ConfigDict, images: jax.Array,
              key: jax.Array, tasks: Sequence[str], starts: Sequence[str], *, later_steps: int,
              strength: float = 1.0) -> jax.Array:
    """The plugins `tasks` in sequence on (B, H, W, 3) images: the first with the sampler's full step count,
    each later one (on the previous output) with `later_steps` (the authors' 3), each from its own start."""
    for i, (task, start) in enumerate(zip(tasks, starts)):
        images = restore(model, schedule, sampler_config, images, jax.random.fold_in(key, i), task=task, start=start,
                         strength=strength, num_steps=None if i == 0 else later_steps)
    return images


# ---------------------------------------------------------------------------------------------------------
# The method.


class PluginParts:
    """What a method on plugins reads from its config once: the schedule, the base and its U-Net config, the
    CLIP tower's config and the plugins' config; builds the frozen parts and reads their values."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.schedule = schedule_from_config(config.diffusion)
        self.dtype = jnp.dtype(config.compute_dtype)
        self.base = read_base(config.pretrained.root)
        self.unet_config = UNetConfig.from_diffusers(read_config(pretrained_path(config, "unet")))
        self.null_context_shape = null_context_shape(config, self.base)
        clip = pretrained_path(config, "image_encoder")
        self.clip_config: CLIPVisionConfig = transformers_clip.read_vision_config(clip)
        note = random_clip.stand_in_note(clip)
        if note:
            logging.warning("config.pretrained.image_encoder = %s is %s: the plugins' prompts read random features",
                            clip, note)
        model = config.model
        self.plugin_config = TaskPluginConfig.from_unet(
            self.unet_config, clip_width=self.clip_config.hidden_size, prompt_width=model.prompt_width or None,
            leaky_relu_slope=model.leaky_relu_slope)
        self.attention = model.attention_implementation or None

    def plugin(self, rngs: nnx.Rngs) -> TaskPlugin:
        return TaskPlugin(self.plugin_config, dtype=self.dtype, attention_implementation=self.attention, rngs=rngs)

    def model(self, rngs: nnx.Rngs, tasks: Sequence[str], model_class: type = PluginModel, **extra) -> PluginModel:
        """`model_class` (a PluginModel) of the frozen parts, a plugin per task and `extra` modules."""
        autoencoder = build_autoencoder(self.config, self.base, rngs=rngs, dtype=self.dtype)
        unet = UNet2DConditionModel(self.unet_config, rngs=rngs, dtype=self.dtype,
                                    attention_implementation=self.attention)
        null_context = nnx.Param(jnp.zeros(self.null_context_shape, jnp.float32))
        clip_vision = CLIPVisionModel(self.clip_config, rngs=rngs, dtype=self.dtype)
        # Each task's plugin from its own draw (the run's seed folded with the task): two plugins never start
        # identical, which the selector, telling plugins apart by their prompts, relies on.
        plugins = {task: self.plugin(nnx.Rngs(jax.random.fold_in(rngs.params(), TASKS.index(task)))) for task in tasks}
        return model_class(autoencoder, unet, null_context, clip_vision, plugins, **extra)

    def frozen_state(self) -> FlatState:
        """The base's and the CLIP tower's values."""
        state = dict(frozen_base_state(self.config, self.base))
        vision = transformers_clip.load_clip_vision(pretrained_path(self.config, "image_encoder"))
        state.update({("clip_vision", *p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(vision, nnx.Param))})
        return state

    @functools.cached_property
    def size_multiple(self) -> int:
        """The image sizes the model takes are multiples of this: the autoencoder's factor times the U-Net's."""
        return autoencoder_factor(self.config, self.base) * 2 ** (len(self.unet_config.block_out_channels) - 1)


class PluginMethod(Method):
    """One Task-Plugin trained on a frozen base (module docstring)."""

    evaluator_kinds = ("restoration",)

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        sections = [checks.Section("plugin", _PLUGIN_CHECKS), *base_sections(config)]
        rules = [] if any(s.problems(config) for s in sections) else [*base_rules(), evals_rule("restoration", _RESTORATION_CHECKS)]
        return [*sections, checks.Section("", {}, closed=False, rules=tuple(rules))]

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.parts = PluginParts(config)
        self.schedule = self.parts.schedule
        self.task = config.plugin.task
        self.start = start_for(config, self.task)
        self._edit = ModelFunction(lambda model, images, key: self.restore_arms(model, images, key))

    def init_model(self, rngs: nnx.Rngs) -> PluginModel:
        return self.parts.model(rngs, (self.task,))

    def pretrained_state(self) -> FlatState:
        return self.parts.frozen_state()

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.PathContains("plugins"))

    # -- data -----------------------------------------------------------------------------------------

    @property
    def degrade(self):
        """The task's synthetic degradation, (clean (H, W, 3) in [0, 1], seed) -> degraded."""
        return functools.partial(degrade, self.task)

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        return data.ImageBatches(self.config.data, degrade=self.degrade, start_step=start_step,
                                 process_index=process_index, process_count=process_count)

    # -- training and inference -----------------------------------------------------------------------

    def loss(self, model: PluginModel, batch: Batch, rng: jax.Array):
        """The noise loss with z_0 = E(clean), the plugin conditioned on the degraded input (module docstring)."""
        t_key, noise_key = jax.random.split(rng)
        z_0 = model.encode(batch["image"])
        condition = model.encode(batch["source"])
        t = sample_timesteps(t_key, z_0.shape[0], self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, z_0.shape, jnp.float32)
        z_t = q_sample(self.schedule, z_0, t, noise)
        prediction = model.plugin_prediction(self.task, z_t, t, model.clip_tokens(batch["source"]), condition)
        return diffusion_loss(self.schedule, prediction, z_0, noise, t, **loss_settings(self.config.diffusion)), {}

    def restore_arms(self, model: PluginModel, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """{"frozen", "plugin"}: (B, H, W, 3) restorations of degraded `images`, from the same start."""
        run = functools.partial(restore, model, self.schedule, self.config.sampler, images, key, start=self.start,
                                strength=self.config.plugin.strength)
        return {"frozen": run(task=None), "plugin": run(task=self.task)}

    def sample(self, model: PluginModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """The plugin's restorations of `source`."""
        return restore(model, self.schedule, self.config.sampler, batch["source"], rng, task=self.task,
                       start=self.start, strength=self.config.plugin.strength)

    def edit(self, model: PluginModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """The plugin's and the frozen model's restoration of `image` (H, W, 3) at the training scale."""
        fitted = latents_lib.fit_image(image, self.config.data.resize_short_side, self.parts.size_multiple)
        arms = self._edit(model, jnp.asarray(fitted[None]), jax.random.key(self.config.edit.seed))
        return {self.task: np.asarray(arms["plugin"][0]), "frozen": np.asarray(arms["frozen"][0]), "input": fitted}

    def export(self, model: PluginModel, directory: str) -> list[str]:
        """`plugin/` (the plugin for PyTorch: config.json + safetensors, editdiff/interop/task_plugin.py) and
        `plugin.json` (task, start, the base and CLIP directories it runs on, and torch_max_abs_error: the PyTorch
        plugin prediction against the JAX one); returns the paths written."""
        from editdiff.interop.task_plugin import export_task_plugin, exported_plugin_prediction_error

        if jax.process_index() != 0:
            return []
        plugin_directory = os.path.join(directory, "plugin")
        export_task_plugin(model.plugins[self.task], plugin_directory)
        error = exported_plugin_prediction_error(model, self.task, plugin_directory=plugin_directory,
                                                 unet_directory=pretrained_path(self.config, "unet"),
                                                 clip_directory=pretrained_path(self.config, "image_encoder"))
        if error is not None:
            logging.info("Exported plugin prediction in PyTorch vs JAX: max abs error %.2e", error)
        path = os.path.join(directory, "plugin.json")
        with open(path, "w") as f:
            json.dump({"method": "plugin", "task": self.task, "start": self.start,
                       "base": os.path.abspath(self.config.pretrained.root),
                       "image_encoder": os.path.abspath(pretrained_path(self.config, "image_encoder")),
                       "sampler": self.config.sampler.to_dict(), "torch_max_abs_error": error}, f, indent=2)
        return [plugin_directory, path]

    def evaluators(self) -> list[Evaluator]:
        return [RestorationEvaluator(name, entry.every, self, entry) for name, entry in self.config.evals.items()]


# ---------------------------------------------------------------------------------------------------------
# Evaluation.


RESTORATION_HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True}


def restoration_scores(restored: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of (N, H, W, 3) images in [-1, 1] against the clean ones, on [0, 1], averaged."""
    from eval import metrics as pixel

    pred, target = (jnp.asarray(restored) + 1) / 2, (jnp.asarray(clean) + 1) / 2
    return {"PSNR": float(jnp.mean(pixel.psnr(pred, target, 1.0))), "SSIM": float(jnp.mean(pixel.ssim(pred, target, 1.0)))}


class RestorationEvaluator(Evaluator):
    """The task's held-out set: input, frozen and plugin arms on PSNR and SSIM (module docstring)."""

    writes_samples = True

    def __init__(self, name: str, every: int, method: PluginMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every)
        self.method, self.settings = method, settings
        examples = data.fixed_examples(method.config.data, "heldout", settings.num_images, settings.seed,
                                       degrade=method.degrade)
        self.clean, self.degraded = examples["image"], examples["source"]
        self._evaluate = ModelFunction(method.restore_arms)

    def __call__(self, model, step, workdir, writer):
        key = jax.random.key(self.settings.seed)
        results = [(count, self._evaluate(model, chunk, jax.random.fold_in(key, i)))
                   for i, (count, chunk) in enumerate(chunks(self.degraded, self.settings.batch_size))]
        arms = {"input": self.degraded, **{arm: np.concatenate([np.asarray(by_arm[arm])[:count] for count, by_arm in results])
                                           for arm in ("frozen", "plugin")}}
        strength = self.method.config.plugin.strength  # a partial start is another experiment: its own set
        set_name = self.method.task + ("" if strength == 1.0 else f" @ strength {strength:g}")
        scores = {set_name: {arm: restoration_scores(images, self.clean) for arm, images in arms.items()}}
        write_scores(workdir, step, scores, higher_is_better=RESTORATION_HIGHER_IS_BETTER, writer=writer)
        n = self.settings.grid_images
        if n:
            columns = [("degraded", self.degraded[:n]), ("frozen", arms["frozen"][:n]), ("plugin", arms["plugin"][:n]),
                       ("clean", self.clean[:n])]
            write_grid(workdir, step, labelled_grid(columns, [f"held-out {i}" for i in range(len(columns[0][1]))]),
                       folder=self.name, writer=writer)
        return scores


METHOD = PluginMethod
