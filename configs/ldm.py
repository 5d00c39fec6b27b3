"""Plain latent diffusion training (editdiff/methods/ldm.py): the base model the rectifier and plugin demos start
from. Presets after the colon, modifiers after commas (`configs/ldm.py:sd15,unconditional`):

  demo (the default) — unconditional, the bundled scikit-image photos (7 train, 2 held out) as 32 px thumbnails
      (short side resized to 32 px, random 32 px crops along the long side, flips), the parameter-free patch
      autoencoder (factor 2: 16 x 16 x 12 latents), a small two-level SD-style U-Net (64, 128 channels) with a
      learned null context, DDPM's linear schedule with x_0 prediction, 800 steps; sized for a 2-core CPU in
      under 10 minutes:

        python main.py --config configs/ldm.py --workdir runs/ldm
        python main.py --config configs/ldm.py --workdir runs/ldm --mode=export

      Expect: `runs/ldm/samples/step_NNNNNNN.png` (4 x 4 samples, each row after a training crop) at steps 400
      and 800, and `runs/ldm/export/` with unet/, scheduler/, null_context/ and ldm.json, which
      `config.pretrained.root` of the rectifier and plugin demos accepts. Measured 2026-12-06 on an idle
      2-core machine: training and export 5 min 11 s wall (3.2-5.0 steps/s), the export's check of the
      diffusers U-Net against the JAX one: max abs error 1.2e-6 (2026-12-01, before the GroupNorm and
      convolution speed-ups: training 8 min 37 s at 1.93 steps/s, final loss 0.108).
      The samples at step 800 are blurry thumbnails of the training photos (the orange retina disc, the
      astronaut, the stained cells, the dark starry one): a base that has memorised its seven photos, not a
      general image model. (With epsilon or v prediction the same budget gives colour noise.)
      FID / KID against the held-out photos need pytorch-fid's Inception weights:
      `--config.evals.fid.inception_weights=DIR` (DIR holding pt_inception-2015-12-05-6726825d.pth), then
      `runs/ldm/eval/step_NNNNNNN.md` has the model's row beside `train_images` (the training crops scored the
      same way: what reproducing the training set exactly would get).

  sd15 — fine-tune a local Stable Diffusion 1.x pipeline directory (unet/, vae/, text_encoder/, tokenizer/) on
      a folder of captioned images (`metadata.jsonl` with file_name/text, or NAME.txt beside NAME.jpg): frozen VAE
      and CLIP text encoder, 512 px, batch 8, lr 1e-5, bfloat16, 10% caption dropout, guidance 7.5 samples:

        python main.py --config configs/ldm.py:sd15 --config.pretrained.root=/path/to/sd15 \\
            --config.data.source.folder=/path/to/captioned_images --workdir runs/ldm_sd15
        python main.py --config configs/ldm.py:sd15 ... --mode=export   # also a StableDiffusionPipeline

      On a GPU add `--config.model.attention_implementation=cudnn` (fused flash attention).

  tiny — for tests and smoke runs: 16 px crops, a two-level U-Net of width 16/32, two steps.

Modifiers:

  text            condition on captions with a frozen CLIP text encoder and tokenizer from config.pretrained
                  (the bundled photos carry one caption each; a folder needs captions); cross_attention_dim
                  comes from the text encoder
  unconditional   a learned null context instead of text (e.g. `sd15,unconditional` on an uncaptioned folder)

Any key can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""
from __future__ import annotations

import ml_collections

from editdiff.methods.ldm import (default_model_config, fid_entry, ldm_diffusion_config, ldm_sampler_config,
                                  samples_entry)
from editdiff.pretrained import default_pretrained_config
from editdiff.train.config import default_train_config
from input_pipeline.captions import default_image_data_config


def _demo_unet() -> ml_collections.ConfigDict:
    """16x16 latents -> 8x8, attention at 8x8 and in the middle block (self-attention for the layout; the
    cross-attention sees the null context). A third level (64, 64, 128) costs more per step and compiles
    slower on CPU without a visibly better thumbnail."""
    return ml_collections.ConfigDict(dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(64, 128),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=128,
        norm_num_groups=32,
        use_linear_projection=True,
    ))


def _base() -> ml_collections.ConfigDict:
    config = default_train_config()
    config.method = "ldm"
    config.pretrained = default_pretrained_config()
    config.data = default_image_data_config()
    config.data.seed = config.get_ref("seed")
    config.model = default_model_config()
    config.model.unet = _demo_unet()
    config.diffusion = ldm_diffusion_config()  # SD's schedule, epsilon prediction, L2 noise loss
    config.sampler = ldm_sampler_config()  # DDIM, 50 leading steps, no guidance
    config.evals.samples = samples_entry()
    config.evals.fid = fid_entry()
    return config


def _demo(config: ml_collections.ConfigDict) -> None:
    # The photos' short side resized to the 32 px crop: whole thumbnails (shifted along the long side, flipped),
    # few enough distinct images that 800 CPU steps learn them; 64 px crops cost ~4x per step (measured).
    config.data.crop_size = config.data.resize_short_side = 32
    # Patch latents are pixels (std ~0.5, no VAE scaling): DDPM's linear schedule for pixel-space models, and
    # x_0 prediction. Measured on this preset (same steps): epsilon and v prediction both still gave colour
    # noise after 1000 steps (their x_0 estimates at small t keep most of the noise, and epsilon's at
    # t = 999 is its error times 1 / sqrt(alpha_bar) = 158), while x_0 prediction gave recognisable blurry
    # thumbnails after 500.
    config.diffusion.update(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, prediction_type="sample")
    config.sampler.update(num_steps=50, spacing="trailing")
    t = config.train
    t.num_steps, t.learning_rate, t.warmup_steps, t.schedule = 800, 1e-3, 50, "cosine"
    t.ema_decay = 0.99
    t.log_every, t.checkpoint_every = 50, 400
    config.evals.samples.every = 400
    config.evals.fid.update(num_images=64, batch_size=16)


def _sd15(config: ml_collections.ConfigDict) -> None:
    config.model.update(autoencoder="vae", conditioning="text")
    config.model.unet = ml_collections.ConfigDict()  # the pretrained U-Net (config.pretrained unet/)
    config.data.source.kind = "folder"
    config.data.crop_size = config.data.resize_short_side = 512
    config.data.batch_size = 8
    config.compute_dtype = "bfloat16"
    # Sampled as SD's own DDIMScheduler config does it (diffusers' pipelines force steps_offset 1 anyway).
    config.sampler.update(guidance_scale=7.5, steps_offset=1, set_alpha_to_one=False)
    t = config.train
    t.num_steps, t.learning_rate, t.warmup_steps, t.schedule = 15_000, 1e-5, 500, "constant"
    t.ema_decay = 0.9999
    t.log_every, t.checkpoint_every = 100, 2500
    config.evals.samples.update(every=2500, num_rows=4, num_columns=4)
    config.evals.fid.update(every=5000, num_images=256, batch_size=16)


def _tiny(config: ml_collections.ConfigDict) -> None:
    config.data.crop_size, config.data.resize_short_side, config.data.batch_size = 16, 24, 4
    config.model.unet.update(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
                             attention_head_dim=2, cross_attention_dim=16, norm_num_groups=8)
    config.sampler.num_steps = 2
    t = config.train
    t.num_steps, t.warmup_steps, t.log_every, t.checkpoint_every = 2, 0, 1, 1
    t.async_checkpointing = False
    config.evals.samples.update(num_rows=2, num_columns=2)
    config.evals.fid.update(num_images=4, batch_size=4, feature_size=75)


def _apply_modifier(config: ml_collections.ConfigDict, modifier: str) -> None:
    if modifier == "text":
        config.model.conditioning = "text"
        if "cross_attention_dim" in config.model.unet:  # the text encoder's width
            del config.model.unet["cross_attention_dim"]
    elif modifier == "unconditional":
        config.model.conditioning = "unconditional"
        config.sampler.guidance_scale = 1.0
    else:
        raise ValueError(f"configs/ldm.py: unknown modifier {modifier!r}; allowed: text, unconditional")


def use_base_schedule(config: ml_collections.ConfigDict, preset: str, *, sampler_grid: bool = True) -> None:
    """Gives a method's `config` the schedule of the ldm `preset` whose export is its frozen base (the methods
    check it against the export's scheduler config: editdiff.methods.bases.SCHEDULE_KEYS) and, with
    `sampler_grid`, that preset's sampler grid (spacing, steps_offset, set_alpha_to_one)."""
    from editdiff.methods.bases import SCHEDULE_KEYS

    base = get_config(preset)
    for key in SCHEDULE_KEYS:
        config.diffusion[key] = base.diffusion[key]
    if sampler_grid:
        config.sampler.update(spacing=base.sampler.spacing, steps_offset=base.sampler.steps_offset,
                              set_alpha_to_one=base.sampler.set_alpha_to_one)


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | sd15 | tiny) followed by comma-separated modifiers."""
    preset, *modifiers = [part.strip() for part in (arg or "demo").split(",")]
    presets = {"demo": _demo, "sd15": _sd15, "tiny": _tiny}
    if preset not in presets:
        raise ValueError(f"configs/ldm.py: unknown preset {preset!r}; allowed: {', '.join(presets)}")
    config = _base()
    presets[preset](config)
    for modifier in modifiers:
        _apply_modifier(config, modifier)
    return config
