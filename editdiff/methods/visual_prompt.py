"""GENIE visual prompting (seed 003, METHODS.md §4): a ControlNet on a frozen latent diffusion model does the
image-to-image task that one example pair shows.

Cells (B, c, c, 3) in [-1, 1]: the reference pair x_r -> y_r and the query x_q of the same task, whose answer
y_q the model draws (input_pipeline/visual_tasks builds them). Two layouts (`config.visual_prompt.layout`):

  grid (GENIE):  hint = [[x_r, y_r], [x_q, HINT_FILL]] (pixels, the answer cell masked: it never leaks), and the
                 frozen U-Net denoises the latent of the whole target grid z_0 = E([[x_r, y_r], [x_q, y_q]])
                 (B, 2h, 2w, C) with the ControlNet's residuals; at sampling the three known cells are kept by
                 known-region blending (`config.sampler.blend_known_region`) and the answer is the bottom-right
                 cell of the decoded grid.
  separate (Prompt Diffusion): the pair concatenated on channels (B, c, c, 6) through the ControlNet's hint
                 encoder, the query (B, c, c, 3) through a second one (zero-initialised output), their embeddings
                 summed; the U-Net denoises the answer's latent z_0 = E(y_q) (B, h, w, C) alone.

Context of the U-Net and the ControlNet (`config.visual_prompt.context`): "null", the base's fixed context (an
unconditional export's null context; SD's empty-caption encoding), or "clip", the slides' task-arithmetic
variant: the CLIP image embeddings e(.) of the frozen tower `config.pretrained.image_encoder` as four tokens
[e(x_r), e(y_r), e(x_q), e(x_q) + e(y_r) - e(x_r)], through a trainable linear map to the cross-attention width.

Training loss, for t ~ U{0..T-1}, z_t = q(z_0, t, noise):

    L = L_noise + lambda_t * L_TC,   lambda_t = config.visual_prompt.consistency_weight (0.05, the slides)
    L_noise = || target - UNet(z_t, t, ctx; ControlNet(z_t, t, ctx, hint)) ||^2   over the grid, or over the
              answer cell only (`noise_loss_region`; a grid cell is a whole latent block: check_grid)
    L_TC    = 1 - cos(phi(y^) - phi(x_q), phi(y_r) - phi(x_r))                    (task consistency)

y^ is the answer cell of the step's x_0 estimate. phi (`consistency_embedding`): "vae", the autoencoder's scaled
posterior mean of each cell (for y^ the x_0 estimate's answer block itself, which already is that latent; no
weights needed), or "clip", the unit CLIP image embedding (y^ decoded first). Only the ControlNet (and, in the
separate layout, the query's hint encoder; with the CLIP context, its projection) trains.

The base (`config.pretrained.root`, editdiff/methods/bases.py): an export of `configs/ldm.py` or a Stable
Diffusion pipeline directory. The ControlNet starts as the base U-Net's encoder (ControlNet's initialisation),
its hint encoder has one stride-2 stage per factor of 2 of the autoencoder (16, 32, 96, 256 channels for SD's
factor 8; 16, 32 for the demo's patch factor 2), its output convs are zero: at step 0 the model is the base.

Evaluator `tasks` (eval/visual_prompt_scores.py for the metrics): per task (the training tasks, then the
out-of-distribution ones, marked "(OOD)"), `num_images` held-out examples with fixed seeds; arms `model`,
`copy-query` (the query returned unchanged: the do-nothing answer) and `shuffled-prompt` (the same query with
the reference pair of the next task's example: a model that reads the prompt must do worse). Grid
`WORKDIR/NAME/step_N.png`: per task, reference input, reference output, query, model, shuffled-prompt, answer.

`--mode=edit`: `config.edit.reference_input` and `config.edit.reference_output` (the example pair, image files)
and each query of `config.edit.input`, each at the training scale (short side `config.data.resize_short_side`)
centre-cropped to the cell, the answer written beside the pair and the query. `--mode=export`: `controlnet/`
(a diffusers ControlNetModel) and `visual_prompt.json` (layout, cell size, context, sampler, the base;
torch_max_abs_error: diffusers' ControlNet + U-Net against the JAX prediction on a grid), plus
`query_hint_encoder/` (separate layout) and `context_projection/` (CLIP context).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff import config_checks as checks
from editdiff.diffusion import samplers
from editdiff.diffusion.config import (default_sampler_config, diffusion_section, loss_settings, sampler_section,
                                       sampler_settings)
from editdiff.diffusion.losses import diffusion_loss, sample_timesteps
from editdiff.diffusion.parameterisation import q_sample, x0_and_eps
from editdiff.diffusion.schedules import schedule_from_config
from editdiff.interop import random_clip, transformers_clip
from editdiff.interop.torch_io import read_config
from editdiff.methods import latents as latents_lib
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.bases import (autoencoder_factor, base_rule, broadcast_context, build_autoencoder,
                                    frozen_base_state, null_context_shape, read_base)
from editdiff.methods.plugin import clip_rule, evals_rule
from editdiff.methods.reports import ModelFunction, chunks, labelled_grid, write_grid, write_scores
from editdiff.nn import clip_losses
from editdiff.nn.clip import CLIPVisionConfig, CLIPVisionModel
from editdiff.nn.clip_preprocess import resize_center_crop
from editdiff.nn.controlnet import ControlNetConditioningEmbedding, ControlNetModel
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.pretrained import pretrained_path, pretrained_section
from input_pipeline.visual_tasks import HINT_FILL, OOD_TASKS, assemble_grid, check_grid
from input_pipeline.visual_tasks import batches as data

LAYOUTS = ("grid", "separate")
CONTEXTS = ("null", "clip")
EMBEDDINGS = ("vae", "clip")
NOISE_LOSS_REGIONS = ("grid", "answer")
TASK_CONSISTENCY_WEIGHT = 0.05  # lambda_t of the slides
HINT_STAGE_CHANNELS = (16, 32, 96, 256)  # diffusers' ControlNet hint encoder; one stage per factor of 2, + 1
CELLS = ("reference_input", "reference_output", "query")


# ---------------------------------------------------------------------------------------------------------
# Config.


def default_visual_prompt_config() -> ml_collections.ConfigDict:
    """`config.visual_prompt` (module docstring)."""
    return ml_collections.ConfigDict(dict(layout="grid", context="null", consistency_weight=TASK_CONSISTENCY_WEIGHT,
                                          consistency_embedding="vae", noise_loss_region="grid",
                                          attention_implementation=""))


def visual_prompt_sampler_config() -> ml_collections.ConfigDict:
    """`config.sampler`: DDIM 50 steps with known-region blending of the grid's three known cells, from pure
    noise; `query_strength` < 1 starts the answer from the query instead (`query_start`, SDEdit)."""
    config = default_sampler_config()
    config.update(name="ddim", num_steps=50, blend_known_region=True, query_strength=1.0)
    return config


def default_edit_config() -> ml_collections.ConfigDict:
    """`config.edit`: the queries (input, output: the trainer's), the example pair and the start noise's seed."""
    return ml_collections.ConfigDict(dict(input="", output="", reference_input="", reference_output="", seed=0))


_TASKS_DEFAULTS = dict(num_images=8, batch_size=8, seed=0, grid_images=1, tasks=())


def tasks_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "tasks" with its defaults (tasks=(): the training tasks + OOD)."""
    return ml_collections.ConfigDict(dict(kind="tasks", every=every, **{**_TASKS_DEFAULTS, **settings}))


_TASKS_CHECKS = {"kind": checks.ANY, "every": checks.ANY, "num_images": checks.int_at_least(1),
                 "batch_size": checks.int_at_least(1), "seed": checks.int_at_least(0),
                 "grid_images": checks.int_at_least(0),
                 "tasks": ((lambda v: isinstance(v, (tuple, list)) and all(isinstance(t, str) for t in v)),
                           "a tuple of task names (empty: the training tasks and the OOD tasks)")}
_VISUAL_PROMPT_CHECKS = {"layout": checks.one_of(LAYOUTS), "context": checks.one_of(CONTEXTS),
                         "consistency_weight": checks.number_at_least(0),
                         "consistency_embedding": checks.one_of(EMBEDDINGS),
                         "noise_loss_region": checks.one_of(NOISE_LOSS_REGIONS),
                         "attention_implementation": checks.one_of(("", "xla", "cudnn"))}
_EDIT_CHECKS = {"input": checks.ANY, "output": checks.ANY, "reference_input": checks.string(),
                "reference_output": checks.string(), "seed": checks.int_at_least(0)}


def _needs_clip(config) -> bool:
    vp = config.visual_prompt
    return vp.context == "clip" or (vp.consistency_embedding == "clip" and vp.consistency_weight > 0)


def _grid_rule(config) -> list[str]:
    """The cell fits the autoencoder (each cell a whole latent block) and the U-Net's downsampling; nothing
    while the base is invalid (base_rule reports it; this rule reads the base's configs)."""
    if base_rule(config, pixel=False):
        return []
    base = read_base(config.pretrained.root)
    factor = autoencoder_factor(config, base)
    levels = len(read_config(pretrained_path(config, "unet"))["block_out_channels"])
    cell = config.data.cell_size
    try:
        check_grid(cell, factor)
    except ValueError as error:
        return [f"config.data.cell_size = {cell} is invalid: {error}"]
    layout = config.visual_prompt.layout
    cells_per_side = 1 if layout == "separate" else 2  # the U-Net sees the answer alone, or the grid
    latent, multiple = cells_per_side * cell // factor, 2 ** (levels - 1)
    if latent % multiple:
        return [f"config.data.cell_size = {cell} is invalid; allowed: a multiple of "
                f"{max(1, factor * multiple // cells_per_side)} (the {layout} layout's latent of {latent} px must "
                f"halve {levels - 1} times in the U-Net)"]
    if factor & (factor - 1) or factor > 2 ** (len(HINT_STAGE_CHANNELS) - 1):
        return [f"config.pretrained.root: autoencoder factor {factor} has no ControlNet hint encoder here (a power "
                f"of 2 up to {2 ** (len(HINT_STAGE_CHANNELS) - 1)})"]
    return []


def _edit_rule(config) -> list[str]:
    problems = []
    for key in ("reference_input", "reference_output"):
        path = config.edit[key]
        if path and not os.path.isfile(path):
            problems.append(f"config.edit.{key} = {path!r} is invalid; allowed: an existing image file (the "
                            "example pair's " + key.split("_")[1] + ")")
    return problems


def _clip_rule(config) -> list[str]:
    return clip_rule(config) if _needs_clip(config) else []


# ---------------------------------------------------------------------------------------------------------
# The model.


def hint_channels(factor: int) -> tuple[int, ...]:
    """The hint encoder's stage widths for an autoencoder of `factor`: log2(factor) stride-2 stages."""
    return HINT_STAGE_CHANNELS[:int(math.log2(factor)) + 1]


def answer_block(latents: jax.Array) -> jax.Array:
    """The bottom-right quarter (B, h, w, C) of grid latents (B, 2h, 2w, C): the answer cell's latent."""
    height, width = latents.shape[1] // 2, latents.shape[2] // 2
    return latents[:, height:, width:]


def known_cells_mask(latents: jax.Array) -> jax.Array:
    """(B, 2h, 2w, 1): 1 on the three known cells of a grid latent, 0 on the answer's."""
    height, width = latents.shape[1] // 2, latents.shape[2] // 2
    mask = jnp.ones((*latents.shape[:3], 1), jnp.float32)
    return mask.at[:, height:, width:].set(0.0)


def query_start(known: jax.Array) -> jax.Array:
    """The grid latent (B, 2h, 2w, C) with the query's block copied into the answer's: the clean start of an
    SDEdit sampler (config.sampler.query_strength < 1), which then draws the answer as a change of the query."""
    height, width = known.shape[1] // 2, known.shape[2] // 2
    return known.at[:, height:, width:].set(known[:, height:, :width])


def task_consistency_loss(answer: jax.Array, query: jax.Array, reference_output: jax.Array,
                          reference_input: jax.Array) -> jax.Array:
    """L_TC = 1 - cos(phi(y^) - phi(x_q), phi(y_r) - phi(x_r)) per example, (B,), from the four embeddings
    (B, ...) (flattened): 0 for a perfect analogy, 1 for an orthogonal change, 2 for the opposite one."""
    flat = lambda x: x.reshape(x.shape[0], -1)
    return clip_losses.direction_loss(flat(answer) - flat(query), flat(reference_output) - flat(reference_input))


class VisualPromptModel(latents_lib.LatentModel):
    """The base's frozen autoencoder, U-Net and context; the trainable ControlNet; the separate layout's query
    hint encoder; the frozen CLIP tower and the trainable context projection of the CLIP context."""

    def __init__(self, autoencoder: nnx.Module, unet: UNet2DConditionModel, null_context: nnx.Param,
                 controlnet: ControlNetModel, *, query_hint_encoder: ControlNetConditioningEmbedding | None = None,
                 clip_vision: CLIPVisionModel | None = None, context_projection: nnx.Linear | None = None):
        self.autoencoder = autoencoder
        self.unet = unet
        self.null_context = null_context
        self.controlnet = controlnet
        self.query_hint_encoder = query_hint_encoder
        self.clip_vision = clip_vision
        self.context_projection = context_projection

    def clip_embeddings(self, images: jax.Array) -> jax.Array:
        """Unit CLIP image embeddings (B, P) of (B, H, W, 3) images in [-1, 1]."""
        preprocess = functools.partial(resize_center_crop, size=self.clip_vision.config.image_size)
        return clip_losses.image_embeddings(self.clip_vision, images, preprocess)

    def context(self, reference_input: jax.Array, reference_output: jax.Array, query: jax.Array) -> jax.Array:
        """(B, L, D): the base's null context, or the projected task-arithmetic CLIP tokens (module docstring)."""
        if self.context_projection is None:
            return broadcast_context(self.null_context, query.shape[0])
        cells = jnp.concatenate([reference_input, reference_output, query])
        e_in, e_out, e_query = jnp.split(jax.lax.stop_gradient(self.clip_embeddings(cells)), 3)
        tokens = jnp.stack([e_in, e_out, e_query, e_query + e_out - e_in], axis=1)
        return self.context_projection(tokens)

    def prediction(self, z_t: jax.Array, t: jax.Array, context: jax.Array, hint: jax.Array,
                   query_hint: jax.Array | None = None) -> jax.Array:
        """The frozen U-Net with the ControlNet's residuals at (z_t, t); hint (B, H, W, 3 or 6) in pixels,
        query_hint (B, H, W, 3) for the separate layout. Float32, the schedule's parameterisation."""
        added = None if query_hint is None else self.query_hint_encoder(query_hint.astype(self.controlnet.dtype))
        down, mid = self.controlnet(z_t, t, context, hint, added_hint_embedding=added)
        return self.unet(z_t, t, context, down_residuals=down, mid_residual=mid).astype(jnp.float32)


def hints(layout: str, cells: Batch) -> tuple[jax.Array, jax.Array | None]:
    """(hint, query_hint) of the layout from a batch holding the cells (and `hint` for the grid)."""
    if layout == "grid":
        return cells["hint"], None
    return jnp.concatenate([cells["reference_input"], cells["reference_output"]], axis=-1), cells["query"]


def draw_answers(model: VisualPromptModel, schedule, sampler_config: ml_collections.ConfigDict, layout: str,
                 cells: Batch, key: jax.Array) -> jax.Array:
    """Answers (B, c, c, 3) in [-1, 1] for the cells' prompts (`hint` too in the grid layout): the sampler of
    `sampler_config` from noise drawn with `key` (or, with query_strength < 1, from the query re-noised: the
    grid's `query_start`, the query's own latent in the separate layout), the grid's known cells blended in
    when configured."""
    context = model.context(*(cells[name] for name in CELLS))
    hint, query_hint = hints(layout, cells)
    settings = sampler_settings(sampler_config)
    if layout == "grid":
        known = model.encode(hint)  # the answer block is masked out of the blend: the grey fill never shows
        if sampler_config.blend_known_region:
            settings |= dict(known_latent=known, known_mask=known_cells_mask(known))
        start = query_start(known)
    else:
        start = model.encode(cells["query"])
    if sampler_config.query_strength < 1.0:
        settings |= dict(init_latent=start, strength=sampler_config.query_strength)
    noise = jax.random.normal(key, start.shape, jnp.float32)
    sampler = samplers.sampler_by_name(sampler_config.name)
    latents = sampler(lambda z, t: model.prediction(z, t, context, hint, query_hint), schedule, noise,
                      jax.random.fold_in(key, 1), **settings)
    images = model.decode(latents)
    if layout == "grid":
        cell = images.shape[1] // 2
        return images[:, cell:, cell:]
    return images


# ---------------------------------------------------------------------------------------------------------
# The method.


class VisualPromptMethod(Method):
    """GENIE's ControlNet on a frozen base (module docstring)."""

    evaluator_kinds = ("tasks",)

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        sections = [checks.Section("visual_prompt", _VISUAL_PROMPT_CHECKS), diffusion_section(),
                    sampler_section(start_strength="query_strength"), *data.visual_data_sections(),
                    pretrained_section(),
                    checks.Section("edit", _EDIT_CHECKS, closed=False, rules=(_edit_rule,))]
        if any(s.problems(config) for s in sections):
            return sections
        rules = (functools.partial(base_rule, pixel=False), _clip_rule, evals_rule("tasks", _TASKS_CHECKS))
        return [*sections, checks.Section("", {}, closed=False, rules=(*rules, _grid_rule))]

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.schedule = schedule_from_config(config.diffusion)
        self.layout = config.visual_prompt.layout
        self.dtype = jnp.dtype(config.compute_dtype)
        self.base = read_base(config.pretrained.root)
        self.factor = autoencoder_factor(config, self.base)
        self.unet_config = UNetConfig.from_diffusers(read_config(pretrained_path(config, "unet")))
        self.null_context_shape = null_context_shape(config, self.base)
        self.attention = config.visual_prompt.attention_implementation or None
        self.clip_config: CLIPVisionConfig | None = None
        if _needs_clip(config):
            directory = pretrained_path(config, "image_encoder")
            self.clip_config = transformers_clip.read_vision_config(directory)
            note = random_clip.stand_in_note(directory)
            if note:
                logging.warning("config.pretrained.image_encoder = %s is %s: the CLIP embeddings are random features",
                                directory, note)
        self.tasks = data.training_tasks(config.data)
        self._answers = ModelFunction(lambda model, cells, key: draw_answers(
            model, self.schedule, self.config.sampler, self.layout, cells, key))

    def init_model(self, rngs: nnx.Rngs) -> VisualPromptModel:
        autoencoder = build_autoencoder(self.config, self.base, rngs=rngs, dtype=self.dtype)
        unet = UNet2DConditionModel(self.unet_config, rngs=rngs, dtype=self.dtype,
                                    attention_implementation=self.attention)
        null_context = nnx.Param(jnp.zeros(self.null_context_shape, jnp.float32))
        channels = hint_channels(self.factor)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3 if self.layout == "grid" else 6,
                                               conditioning_embedding_out_channels=channels, rngs=rngs)
        extra = {}
        if self.layout == "separate":
            extra["query_hint_encoder"] = ControlNetConditioningEmbedding(
                3, self.unet_config.block_out_channels[0], block_out_channels=channels, dtype=self.dtype, rngs=rngs)
        if self.clip_config is not None:
            extra["clip_vision"] = CLIPVisionModel(self.clip_config, rngs=rngs, dtype=self.dtype)
        if self.config.visual_prompt.context == "clip":
            extra["context_projection"] = nnx.Linear(self.clip_config.projection_dim, self.null_context_shape[-1],
                                                     dtype=self.dtype, rngs=rngs)
        return VisualPromptModel(autoencoder, unet, null_context, controlnet, **extra)

    def pretrained_state(self) -> FlatState:
        """The base (and CLIP tower), and the ControlNet's copy of the base U-Net's encoder (its initialisation;
        the zero convs and the hint encoders keep init_model's values)."""
        state = dict(frozen_base_state(self.config, self.base))
        shared = ("conv_in", "time_embedding", "down_blocks", "mid_block")
        state.update({("controlnet", *path[1:]): value for path, value in list(state.items())
                      if path[0] == "unet" and path[1] in shared})
        if self.clip_config is not None:
            vision = transformers_clip.load_clip_vision(pretrained_path(self.config, "image_encoder"))
            state.update({("clip_vision", *p): np.asarray(v[...])
                          for p, v in nnx.to_flat_state(nnx.state(vision, nnx.Param))})
        return state

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("controlnet"), nnx.PathContains("query_hint_encoder"),
                                          nnx.PathContains("context_projection")))

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        return data.VisualPromptBatches(self.config.data, start_step=start_step, process_index=process_index,
                                        process_count=process_count)

    def loss(self, model: VisualPromptModel, batch: Batch, rng: jax.Array):
        """L_noise + lambda_t L_TC of the module docstring; metrics: both terms."""
        t_key, noise_key = jax.random.split(rng)
        vp = self.config.visual_prompt
        z_0 = model.encode(batch["target"] if self.layout == "grid" else batch["answer"])
        t = sample_timesteps(t_key, z_0.shape[0], self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, z_0.shape, jnp.float32)
        z_t = q_sample(self.schedule, z_0, t, noise)
        context = model.context(*(batch[name] for name in CELLS))
        prediction = model.prediction(z_t, t, context, *hints(self.layout, batch))
        settings = loss_settings(self.config.diffusion)
        if self.layout == "grid" and vp.noise_loss_region == "answer":
            noise_term = diffusion_loss(self.schedule, answer_block(prediction), answer_block(z_0),
                                        answer_block(noise), t, **settings)
        else:
            noise_term = diffusion_loss(self.schedule, prediction, z_0, noise, t, **settings)
        metrics = {"noise_loss": noise_term}
        if vp.consistency_weight == 0:
            return noise_term, metrics
        x0_hat, _ = x0_and_eps(self.schedule, z_t, t, prediction)
        answer_hat = answer_block(x0_hat) if self.layout == "grid" else x0_hat
        cells = jnp.concatenate([batch[name] for name in CELLS])
        if vp.consistency_embedding == "vae":
            phi_answer, phi_cells = answer_hat, jax.lax.stop_gradient(model.encode(cells))
        else:
            phi_answer = model.clip_embeddings(model.decode(answer_hat))
            phi_cells = jax.lax.stop_gradient(model.clip_embeddings(cells))
        phi_in, phi_out, phi_query = jnp.split(phi_cells, 3)
        consistency = jnp.mean(task_consistency_loss(phi_answer, phi_query, phi_out, phi_in))
        metrics["consistency_loss"] = consistency
        return noise_term + vp.consistency_weight * consistency, metrics

    def sample(self, model: VisualPromptModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """The answers (B, c, c, 3) to the batch's prompts."""
        return draw_answers(model, self.schedule, self.config.sampler, self.layout, batch, rng)

    def answers(self, model: VisualPromptModel, prompts: dict[str, np.ndarray], key: jax.Array, batch_size: int
                ) -> np.ndarray:
        """Answers (N, c, c, 3) for N prompts (`with_hints` of their cells), in padded chunks of one program."""
        names = list(prompts)
        split = zip(*(chunks(prompts[name], batch_size) for name in names))
        out = []
        for i, parts in enumerate(split):
            count = parts[0][0]
            batch = {name: chunk for name, (_, chunk) in zip(names, parts)}
            out.append(np.asarray(self._answers(model, batch, jax.random.fold_in(key, i)))[:count])
        return np.concatenate(out)

    def edit(self, model: VisualPromptModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """The answer to `image` (the query) under the configured example pair, beside the pair and the query,
        all (cell, cell, 3) (`fit_cell`)."""
        from input_pipeline.images import load_image

        cell, short_side = self.config.data.cell_size, self.config.data.resize_short_side
        pair = {}
        for key in ("reference_input", "reference_output"):
            path = self.config.edit[key]
            if not path:
                raise checks.ConfigError(f"config.edit.{key} = '' is invalid for --mode=edit; allowed: an image file "
                                         "(the example pair: --config.edit.reference_input=A.png "
                                         "--config.edit.reference_output=B.png)")
            pair[key] = fit_cell(load_image(path) * 2.0 - 1.0, cell, short_side, what=f"config.edit.{key}")
        query = fit_cell(image, cell, short_side, what="the query")
        cells = {**{k: v[None] for k, v in pair.items()}, "query": query[None]}
        answer = self.answers(model, with_hints(cells), jax.random.key(self.config.edit.seed), 1)[0]
        return {"answer": answer, "query": query, **pair}

    def export(self, model: VisualPromptModel, directory: str) -> list[str]:
        """controlnet/, visual_prompt.json and the layout's or context's extra parts (module docstring)."""
        from editdiff.interop import visual_prompt as interop

        if jax.process_index() != 0:
            return []
        written = interop.export_visual_prompt_parts(model, directory)
        error = interop.exported_prediction_error(model, directory, unet_directory=pretrained_path(self.config, "unet"),
                                                  cell_size=self.config.data.cell_size, factor=self.factor,
                                                  layout=self.layout)
        if error is not None:
            logging.info("Exported ControlNet + U-Net prediction in PyTorch vs JAX: max abs error %.2e", error)
        vp = self.config.visual_prompt
        path = os.path.join(directory, "visual_prompt.json")
        with open(path, "w") as f:
            json.dump({"method": "visual_prompt", "layout": self.layout, "cell_size": self.config.data.cell_size,
                       "grid": interop.LAYOUT_NOTES[self.layout], "hint_fill": HINT_FILL,
                       "context": vp.context, "base": os.path.abspath(self.config.pretrained.root),
                       "image_encoder": (os.path.abspath(pretrained_path(self.config, "image_encoder"))
                                         if self.clip_config is not None else None),
                       "tasks": list(self.tasks), "sampler": self.config.sampler.to_dict(),
                       "torch_max_abs_error": error}, f, indent=2)
        return [*written, path]

    def evaluators(self) -> list[Evaluator]:
        return [TaskEvaluator(name, entry.every, self, entry) for name, entry in self.config.evals.items()]


def fit_cell(image: np.ndarray, cell: int, short_side: int, *, what: str) -> np.ndarray:
    """An (H, W, 3) image in [-1, 1] at the training cells' scale: its short side resized to `short_side` (the
    photos' training scale, config.data.resize_short_side; 0: the cell), then centre-cropped to (cell, cell, 3);
    logged when it changes."""
    from input_pipeline.images import resize_short_side

    height, width = image.shape[:2]
    short_side = short_side or cell
    if min(height, width) != short_side:
        image = resize_short_side((image + 1.0) / 2.0, short_side) * 2.0 - 1.0
    top, left = (image.shape[0] - cell) // 2, (image.shape[1] - cell) // 2
    if (height, width) != (cell, cell):
        logging.info("--mode=edit: %s of %dx%d resized to the short side %d and centre-cropped to the %d px cell",
                     what, width, height, short_side, cell)
    return np.asarray(image[top:top + cell, left:left + cell], np.float32)


def with_hints(cells: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CELLS (N, c, c, 3) plus their grid hints (N, 2c, 2c, 3) (input_pipeline.visual_tasks.assemble_grid)."""
    grids = [assemble_grid(*(cells[name][i] for name in CELLS))["hint"].numpy() for i in range(len(cells["query"]))]
    return {**{name: np.asarray(cells[name], np.float32) for name in CELLS}, "hint": np.stack(grids)}


# ---------------------------------------------------------------------------------------------------------
# Evaluation.


class TaskEvaluator(Evaluator):
    """Per task: model, copy-query and shuffled-prompt arms on the task's metrics (module docstring)."""

    writes_samples = True

    def __init__(self, name: str, every: int, method: VisualPromptMethod, settings: ml_collections.ConfigDict):
        from eval import visual_prompt_scores

        super().__init__(name, every)
        self.method, self.settings, self.metrics = method, settings, visual_prompt_scores
        self.tasks = tuple(settings.tasks) or (*method.tasks, *OOD_TASKS)
        self.examples = {task: data.fixed_task_examples(method.config.data, task, settings.num_images, settings.seed)
                         for task in self.tasks}
        # The prompts of both sampled arms, grids assembled once: the shuffled arm takes the next task's pair.
        self.prompts = {}
        for k, task in enumerate(self.tasks):
            examples, other = self.examples[task], self.examples[self.tasks[(k + 1) % len(self.tasks)]]
            shuffled = {**examples, "reference_input": other["reference_input"],
                        "reference_output": other["reference_output"]}
            self.prompts[task] = {"model": with_hints(examples), "shuffled-prompt": with_hints(shuffled)}

    def set_name(self, task: str) -> str:
        return f"{task} (OOD)" if task in OOD_TASKS and task not in self.method.tasks else task

    def __call__(self, model, step, workdir, writer):
        key = jax.random.key(self.settings.seed)
        scores, rows, labels = {}, [], []
        for k, task in enumerate(self.tasks):
            examples, prompts = self.examples[task], self.prompts[task]
            task_key = jax.random.fold_in(key, k)  # both sampled arms start from the same noise
            arms = {"model": self.method.answers(model, prompts["model"], task_key, self.settings.batch_size),
                    "copy-query": examples["query"]}
            if len(self.tasks) > 1:
                arms["shuffled-prompt"] = self.method.answers(model, prompts["shuffled-prompt"], task_key,
                                                              self.settings.batch_size)
            scores[self.set_name(task)] = {arm: self.metrics.task_scores(task, answers, examples["answer"])
                                           for arm, answers in arms.items()}
            n = self.settings.grid_images
            rows.append([examples["reference_input"][:n], examples["reference_output"][:n], examples["query"][:n],
                         arms["model"][:n], arms.get("shuffled-prompt", arms["model"])[:n], examples["answer"][:n]])
            labels += [f"{task} {i}" for i in range(min(n, len(examples["query"])))]
        write_scores(workdir, step, scores, higher_is_better=self.metrics.HIGHER_IS_BETTER, writer=writer)
        if self.settings.grid_images:
            headers = ("reference input", "reference output", "query", "model", "shuffled prompt", "answer")
            columns = [(header, np.concatenate([row[i] for row in rows])) for i, header in enumerate(headers)]
            write_grid(workdir, step, labelled_grid(columns, labels), folder=self.name, writer=writer)
        return scores


METHOD = VisualPromptMethod
