"""GENIE visual prompting (editdiff/methods/visual_prompt.py, seed 003): a ControlNet on a frozen latent diffusion
model does the task an example pair shows. Presets after the colon, then optional modifiers
(`configs/visual_prompt.py:demo,separate`): `separate` (Prompt Diffusion's layout: the pair and the query
through two hint encoders, the U-Net denoising the answer alone, instead of GENIE's 2 x 2 grid), `clip` (the
CLIP task-arithmetic context and phi = CLIP for the task-consistency loss; needs
--config.pretrained.image_encoder).

  demo (the default) — the frozen base that `configs/ldm.py` (demo) trains and exports (patch latents of factor
      2, its linear schedule and x_0 prediction; our choice over a U-Net trained inside the run: the method is
      a ControlNet on a frozen model, and this base is one the repository can make), cells of 16 px cropped
      from the bundled photos as 32 px thumbnails (a 32 px grid), the six synthesisable in-distribution tasks
      (inpainting, colourisation, edges, super-resolution x4, deblurring, denoising) drawn on the fly, the
      null context, the task-consistency loss with phi = the autoencoder's latent (lambda_t 0.05). AdamW,
      constant lr 2e-4 after 50 warm-up steps (twenty times the paper's 1e-5: the demo's budget is minutes),
      gradient clip 1.0, batch 8, 1500 steps; DDIM 20 steps (trailing), the known cells blended in. From the
      repository root:

        python main.py --config configs/ldm.py --workdir runs/ldm
        python main.py --config configs/ldm.py --workdir runs/ldm --mode=export
        python main.py --config configs/visual_prompt.py --workdir runs/visual_prompt

      Expect runs/visual_prompt/eval/step_0001500.md: one set per task (8 held-out examples of the two held-out
      photos each; deraining and contrast marked OOD), arms model, copy-query (the query returned unchanged)
      and shuffled-prompt (the query with another task's pair), each task's metrics of the paper's table
      (eval/visual_prompt_scores.py); runs/visual_prompt/tasks/step_0001500.png, a row per task. Measured
      2026-12-06 on the 2-core machine, nothing else running: 6 min 40 s wall (train step compiled in 15 s,
      4.9-5.6 steps/s, the table ~1.5 min; the base's training and export before it 5 min 11 s), noise loss
      0.20 -> 0.11, consistency loss 0.89 -> 0.77; main metric per task, model / copy-query / shuffled-prompt:

        inpainting SSIM      0.333 / 0.655 / 0.301     super-resolution PSNR  16.35 / 19.29 / 16.31
        colourisation MSE    0.0276 / 0.0295 / 0.0894  deblurring PSNR        16.37 / 25.39 / 16.35
        edges F1             0.007 / 0.314 / 0.309     denoising PSNR         16.61 / 17.97 / 16.62
        deraining (OOD) PSNR 16.68 / 46.11 / 16.51     contrast (OOD) PSNR    15.77 / 22.24 / 15.95

      The model beats copy-query only on colourisation: its answers carry the query's colours and layout but
      blurred (~16.5 dB whatever the task); the prompt matters where the answer's colours differ from the
      query's (colourisation: a wrong pair gives 3x the error; inpainting), not for the restorations. The limit
      is the frozen base, not the sampler: `--mode=eval --config.sampler.query_strength=S` on this run (the
      answer drawn as an SDEdit change of the query, the last int(20 S) steps) gives, for S = 0.5 / 0.3 / 0.1,
      deblurring PSNR 16.55 / 16.82 / 17.48 against copy-query's 25.39, denoising 16.78 / 17.02 / 17.60 (17.97),
      colourisation MSE 0.0270 / 0.0261 / 0.0249: even two steps from the nearly clean query lose 8 dB of the
      query's own deblurring score, as this base (seven memorised thumbnails) does not redraw a held-out crop.
      A base trained on 16 px crops instead of whole thumbnails (`python main.py --config configs/ldm.py
      --workdir runs/ldm16 --config.data.crop_size=16 --config.data.resize_short_side=32
      --config.data.batch_size=32 --config.train.num_steps=1200`, its export as --config.pretrained.root; 5 min
      29 s, this run 6 min 35 s) is worse from noise (deblurring 15.25, denoising 15.51) and at S = 0.1 beats
      copy-query on colourisation (0.0199 vs 0.0295) and denoising (PSNR 18.01 vs 17.97, SSIM 0.594 vs 0.582),
      comes close on edges (F1 0.307 vs 0.314), and stays behind on inpainting, super-resolution and deblurring
      (SSIM 0.518 vs 0.655, 17.19 vs 19.29, 18.05 vs 25.39 dB); the shuffled prompt is worse than the right one
      on five tasks of six there, by little: the re-noised query fixes most of the answer. The preset keeps
      S = 1 (GENIE's sampler). On 2026-12-02 (before the GroupNorm and convolution speed-ups) the same preset
      took 18 min 40 s and scored within 0.4 dB, 0.002 MSE and 0.012 SSIM of the figures above; `,separate`
      on the same data ended in the same place: inpainting SSIM 0.453, colourisation MSE 0.0266, edges F1
      0.089, super-resolution / deblurring / denoising PSNR 16.36 / 16.48 / 16.36; a shuffled prompt again hurt
      colourisation only (0.111). With SD-1.5 (`sd15`) the base is a general image model. Then the user's
      command and the export:

        python main.py --config configs/visual_prompt.py --workdir runs/visual_prompt --mode=edit \\
            --config.edit.reference_input=A.png --config.edit.reference_output=B.png --config.edit.input=QUERY

      edit: runs/visual_prompt/edit/{answer,query,reference_input,reference_output,compare}/NAME.png, 16 px
      cells (each image resized to the short side 32 of the training photos and centre-cropped, logged; ~20 s);
      export (--mode=export): runs/visual_prompt/export/controlnet/ (a diffusers ControlNetModel) and
      visual_prompt.json (the grid layout, the base, torch_max_abs_error of diffusers' ControlNet + U-Net
      against the JAX prediction).

  sd15 — the paper's scale: a local Stable Diffusion 1.5 pipeline directory (--config.pretrained.root; its
      empty-caption encoding as the null context), 256 px cells (a 512 px grid), a photo folder for the
      synthesisable tasks (a labelled_folder source for segmentation or depth), Adam lr 1e-5 (no weight decay),
      batch 16 as in the slides, bfloat16, DDIM 50 steps:

        python main.py --config configs/visual_prompt.py:sd15 --config.pretrained.root=SD15_DIR \\
            --config.data.source.kind=folder --config.data.source.folder=PHOTOS --workdir runs/visual_prompt_sd15

  tiny — for tests: 16 px cells (SSIM needs 11 px), two steps, two sampling steps; the base is a test's tiny
      ldm export (`--config.pretrained.root`).

Any key can be overridden on the command line, e.g. `--config.train.num_steps=200`,
`--config.visual_prompt.noise_loss_region=answer`, `--config.data.tasks="('edges','denoising')"`.
"""
from __future__ import annotations

import ml_collections

from configs import ldm
from editdiff.methods.visual_prompt import (default_edit_config, default_visual_prompt_config, tasks_entry,
                                            visual_prompt_sampler_config)
from editdiff.diffusion.config import default_diffusion_config
from editdiff.pretrained import default_pretrained_config
from input_pipeline.visual_tasks.batches import default_visual_data_config
from editdiff.train.config import default_train_config

DEMO_BASE = "runs/ldm/export"
PAPER_LEARNING_RATE = 1e-5


def _base(ldm_preset: str) -> ml_collections.ConfigDict:
    """The trainer's defaults, the ldm preset's schedule (its export is the base) and the paper's optimiser."""
    config = default_train_config()
    config.method = "visual_prompt"
    config.pretrained = default_pretrained_config()
    config.data = default_visual_data_config()
    config.visual_prompt = default_visual_prompt_config()
    config.edit = default_edit_config()
    config.diffusion = default_diffusion_config()
    config.diffusion.loss = "l2"  # the noise loss of latent diffusion (and ControlNet)
    config.sampler = visual_prompt_sampler_config()
    ldm.use_base_schedule(config, ldm_preset)
    config.evals.tasks = tasks_entry()
    t = config.train
    t.learning_rate, t.weight_decay, t.schedule, t.warmup_steps = PAPER_LEARNING_RATE, 0.0, "constant", 0
    t.grad_clip_norm = 1.0
    return config


def _demo() -> ml_collections.ConfigDict:
    config = _base("demo")
    config.pretrained.root = DEMO_BASE
    # 16 px crops of the 32 px thumbnails the base learnt (a 32 px grid): a 64 px grid trains at 0.47 steps/s
    # here (measured), four times slower than the demo's budget allows.
    config.data.update(cell_size=16, resize_short_side=32, batch_size=8)
    config.sampler.num_steps = 20
    t = config.train
    t.learning_rate, t.warmup_steps, t.weight_decay = 20 * PAPER_LEARNING_RATE, 50, 1e-2
    t.num_steps, t.ema_decay, t.log_every, t.checkpoint_every = 1500, 0.99, 50, 500
    config.evals.tasks.update(num_images=8, batch_size=16, grid_images=1)
    return config


def _sd15() -> ml_collections.ConfigDict:
    config = _base("sd15")  # SD-1.x's schedule (scaled linear, epsilon) and DDIM grid
    config.pretrained.root = ""  # a StableDiffusionPipeline directory: --config.pretrained.root
    config.data.update(cell_size=256, resize_short_side=288, batch_size=16)
    config.compute_dtype = "bfloat16"
    t = config.train
    t.num_steps, t.log_every, t.checkpoint_every = 50000, 100, 2500
    config.evals.tasks.update(every=5000, num_images=16, batch_size=8)
    return config


def _tiny() -> ml_collections.ConfigDict:
    config = _base("tiny")
    config.data.update(cell_size=16, resize_short_side=16, batch_size=2)
    config.sampler.num_steps = 2
    t = config.train
    t.learning_rate = 1e-3
    t.num_steps, t.log_every, t.checkpoint_every, t.async_checkpointing = 2, 1, 1, False
    # Three tasks (two in-distribution, one OOD) keep the tests' table short; the demo scores all of them.
    config.evals.tasks.update(num_images=2, batch_size=2, grid_images=1,
                              tasks=("colourisation", "deblurring", "contrast"))
    return config


def _apply_modifier(config: ml_collections.ConfigDict, modifier: str) -> None:
    if modifier == "separate":
        config.visual_prompt.layout = "separate"
        config.sampler.blend_known_region = False  # the U-Net draws the answer alone: nothing to blend
    elif modifier == "clip":
        config.visual_prompt.update(context="clip", consistency_embedding="clip")
    else:
        raise ValueError(f"configs/visual_prompt.py: unknown modifier {modifier!r}; allowed: separate, clip")


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | sd15 | tiny) followed by comma-separated modifiers (separate, clip)."""
    preset, *modifiers = [part.strip() for part in (arg or "demo").split(",")]
    presets = {"demo": _demo, "sd15": _sd15, "tiny": _tiny}
    if preset not in presets:
        raise ValueError(f"configs/visual_prompt.py: unknown preset {preset!r}; allowed: {', '.join(presets)}")
    config = presets[preset]()
    for modifier in modifiers:
        _apply_modifier(config, modifier)
    return config
