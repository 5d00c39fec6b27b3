"""Multi-task, fine-grained image editing (seed 000; METHODS.md §1).

Presets, chosen after the colon; modifiers (the paper's comparison arms) follow after commas:

  demo (the default) — bundled scikit-image photos, 64 px crops, the parameter-free patch autoencoder, a small
      U-Net predicting x0, 800 steps; trains, samples and evaluates on a 2-core laptop CPU:

        python main.py --config configs/multitask.py --workdir runs/demo

      Beyond the paper (each a config value; `sd15` keeps the paper's formulation): the strengths of C divided
      by the upper ends of their ranges (model.normalise_strengths), the inpainting mask as an input channel
      (model.mask_channel), one blur direction (data.motion_blur.angle_mode = "fixed": C has no angle), x0
      prediction, known-region blending for pure inpainting, and the per-example frame
      (model.standardise = "colour_reference": the model diffuses z_B standardised by the source latent's
      per-channel mean and std — the colour reference's where colour is transferred — so the photo's levels
      and contrast need not pass through the U-Net). The residual formulation (model.residual) is off: at CPU
      budgets it collapsed to doing nothing (benchmarks/RESULTS.md, issue 14 item 1), as did
      model.source_skip (x0_hat = z_A + UNet(...)), also off.

      Expect (measured 2026-12-03 with nothing else running, an empty compilation cache: 11 min 57 s wall,
      train step compiled in 25 s, 1.2-2.0 steps/s, peak RSS 3.0 GB; on a slow day of the same machine the
      previous preset took 23 min 26 s): `runs/demo/eval/step_0000800.md` where the model beats the do-nothing
      baseline on L1 and PSNR for grain (L1 0.015 vs 0.020), colour transfer (0.054 vs 0.172), inpainting
      (0.026 vs 0.035), blur+grain (0.015 vs 0.024) and the three combinations with colour (0.037-0.041 vs
      0.171-0.174), and on the grain sets' high-pass std error (0.004-0.008 vs 0.016-0.020); it still loses on
      blur (L1 0.0113 vs 0.0109, PSNR 35.9 vs 37.4) and sharpening (0.025 vs 0.011), and the grain sets'
      low-pass L1 is level with or just above the untouched photo's (0.0072 vs 0.0065 grain). Sample grids in
      `runs/demo/samples/` (grain still looks smoother than the target's; small holes stay partly
      grey). Just over the 15-minute budget, `--config.model.unet.layers_per_block=2` (15 min 33 s wall, no
      step-400 grid) passes do-nothing on blur L1 (0.0107 vs 0.0109; PSNR still 36.3 vs 37.4) and keeps
      losing on sharpening (0.024). Then edit your own photo at its resolution:

        python main.py --config configs/multitask.py --workdir runs/demo --mode=edit \\
            --config.edit.input=photo.png --config.edit.blur=0.6

      Colour transfer on a photo larger than a tile (config.edit.tile_size = 128) matches each tile to the
      reference on its own, as the 64 px training crops were: flat regions come out over-contrasted. For a
      colour transfer, `--config.sampler.source_strength=0.6` starts the sampler from the source re-noised
      (SDEdit) and runs the last 12 of the 20 steps: colour L1 0.052 -> 0.038 (PSNR 25.1 -> 27.5 dB) on the
      demo's colour set, but an inpainting hole then stays grey (0.027 -> 0.031), so the preset keeps 1.

  sd15 — the paper's setup: SD-1.x VAE and U-Net from a local diffusers pipeline directory (subfolders `vae/`
      and `unet/`), 256 px crops, batch 12, 45K steps, L1 loss; the U-Net's conv_in is widened with zero
      weights for the concatenated source latent and colour reference:

        python main.py --config configs/multitask.py:sd15 --config.pretrained.root=/path/to/sd15 --workdir runs/sd15

  tiny — for tests and smoke runs: 16 px crops, a very small U-Net, two steps; every input choice on (the
      residual formulation too), so that the tests run each path.

Modifiers, e.g. `configs/multitask.py:sd15,palette`:

  palette        Palette++: C broadcast spatially and concatenated to the U-Net input; no cross-attention.
  no_labels      without the binary task labels e1..e5 (C = [beta, sigma, lambda, mu]).
  mapping_depth=N  mapping network with N Dense layers (1, 2 = the paper, 3).
  single=TASK    "ours-single": train on one task only (blur, grain, colour, inpaint, sharpen); the label set
                 becomes {all-off, TASK}.
  combinations   train on random combinations of tasks instead of single tasks (ablation).

Any key can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""
from __future__ import annotations

import ml_collections

from editdiff.diffusion.config import default_diffusion_config, default_sampler_config
from editdiff.methods.multitask_edit import default_edit_config
from editdiff.pretrained import default_pretrained_config
from editdiff.train.config import default_train_config, eval_entry
from input_pipeline.config import TASKS, default_data_config


def _demo_unet() -> ml_collections.ConfigDict:
    """A small SD-style U-Net: 32x32 latents (patch factor 2 at 64 px) -> 16x16 -> 8x8, cross-attention to the
    editing tokens at the two coarser levels. 64 channels at the finest level keep the concatenated source's
    detail (27 input channels); a 16x16x48 latent through 64 channels came out blurred."""
    return ml_collections.ConfigDict(dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(64, 64, 128),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=128,
        norm_num_groups=32,
        use_linear_projection=True,
        resnet_time_scale_shift="default",
    ))


def _base() -> ml_collections.ConfigDict:
    config = default_train_config()
    config.method = "multitask"
    # Local diffusers directories (sd15: config.pretrained.root with `unet/` and `vae/`); empty = from scratch.
    config.pretrained = default_pretrained_config()
    # The sample grid (source, reference, mask, target, edited) and the L1/PSNR/SSIM tables vs do-nothing.
    config.evals.samples = eval_entry("edit_grid", every=0)
    config.evals.tables = eval_entry("edit_tables", every=0)

    # --mode=edit: photo(s), the edit, tiling (editdiff/methods/multitask_edit.py)
    config.edit = default_edit_config()

    config.data = default_data_config()
    config.data.seed = config.get_ref("seed")

    config.model = ml_collections.ConfigDict()
    config.model.autoencoder = "patch"  # "patch" (pixel-unshuffle, no weights) | "vae" (config.pretrained.vae, or root/vae)
    config.model.patch_factor = 2
    config.model.conditioning = "cross_attention"  # | "concat" (Palette++)
    config.model.use_task_labels = True
    # Beyond the paper (all off = its formulation; MultitaskModel's docstring): divide beta, sigma, lambda, mu by
    # the upper ends of their configured ranges; the inpainting mask as an extra input channel; diffuse the
    # residual z_B - z_A, so that doing nothing is the model's starting point.
    config.model.normalise_strengths = False
    config.model.mask_channel = False
    config.model.residual = False
    config.model.residual_scale = 1.0  # k: the model diffuses k (z_B - z_A)
    # x0_hat = z_A + UNet(...): the U-Net draws the edit, the source latent carries the photo (needs x_0 prediction)
    config.model.source_skip = False
    # The frame of the diffused latent: "source" diffuses (z_B - mu_A) / s_A (z_A's per-example, per-channel mean
    # and std), so the photo's levels and contrast come from z_A, not from the U-Net's group-normalised
    # features; "colour_reference" takes mu, s from the reference latent where colour is transferred; "none".
    config.model.standardise = "none"
    config.model.standardise_min_std = 0.05
    # C into the U-Net's class embedding too (added to the time embedding, so it reaches every ResNet, the levels
    # without cross-attention included); the paper's C reaches the U-Net through cross-attention only.
    config.model.edit_embedding = False
    config.model.mapping = ml_collections.ConfigDict(dict(depth=2, hidden_dim=256, num_tokens=4))
    # diffusers UNet2DConditionModel config keys; in/out channels and cross_attention_dim are derived.
    config.model.unet = _demo_unet()

    config.diffusion = default_diffusion_config()  # SD's schedule, epsilon prediction, the paper's L1 loss
    config.sampler = default_sampler_config()  # DDIM, 50 leading steps
    # Pure inpainting: keep the pixels outside the hole by blending the source latent in at every step
    # (diffusion inpainting by replacement). The paper samples without it; off by default.
    config.sampler.blend_known_region = False
    # The sampler's start: 1 = pure noise (the paper); below 1, the source in the model's frame
    # (MultitaskModel.start_latent) re-noised to that strength, only the last int(num_steps * strength) steps run.
    config.sampler.source_strength = 1.0
    return config


def _demo(config: ml_collections.ConfigDict) -> None:
    config.data.crop_size = 64
    config.data.batch_size = 8
    # A CPU budget of minutes: predicting the clean latent (with the paper's L1 loss) gives usable edits far
    # sooner than predicting the noise; sd15 keeps the paper's epsilon prediction.
    config.diffusion.prediction_type = "sample"
    config.sampler.num_steps = 20
    config.sampler.blend_known_region = True
    config.model.normalise_strengths = config.model.mask_channel = True
    # The photo's levels and contrast from the frame, not the U-Net (MultitaskModel.frame): at 400 steps this
    # took blur L1 0.067 -> 0.017 and colour 0.114 -> 0.040 (benchmarks/RESULTS.md, issue 14 item 1).
    config.model.standardise = "colour_reference"
    # One blur direction: C carries the blur's strength but not its angle, so a random angle is not learnable
    # from (source, C) and the model can only average over directions.
    config.data.motion_blur.angle_mode = "fixed"
    t = config.train
    # lr 1e-3 over 5e-4 at 800 steps: blur L1 0.0125 -> 0.0113, sharpening 0.0272 -> 0.0248, grain 0.0155 ->
    # 0.0147; colour 0.0496 -> 0.0544, inpainting 0.0242 -> 0.0261 (benchmarks/RESULTS.md, issue 14 item 1).
    t.num_steps, t.learning_rate, t.warmup_steps, t.schedule = 800, 1e-3, 100, "cosine"
    t.ema_decay = 0.99
    t.log_every, t.checkpoint_every = 100, 400
    config.evals.samples.every = 400
    config.edit.tile_size = 128


def _tiny(config: ml_collections.ConfigDict) -> None:
    """For tests and smoke runs: 16 px crops, a two-level U-Net of width 16/32, a few steps."""
    config.data.crop_size = 16
    config.data.batch_size = 8
    config.data.eval.size = 2
    config.model.mapping.update(hidden_dim=16, num_tokens=2)
    config.model.unet.update(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
                             attention_head_dim=2, cross_attention_dim=16, norm_num_groups=8)
    config.sampler.num_steps = 2
    config.edit.tile_size, config.edit.tile_overlap = 16, 4
    # every input choice on, so that the tests run each path (the export, the PyTorch editor)
    config.model.normalise_strengths = config.model.mask_channel = config.model.residual = True
    config.model.edit_embedding = True
    config.model.unet.resnet_time_scale_shift = "scale_shift"
    t = config.train
    t.num_steps, t.warmup_steps, t.log_every, t.checkpoint_every = 2, 0, 1, 1
    t.async_checkpointing = False


def _sd15(config: ml_collections.ConfigDict) -> None:
    config.model.autoencoder = "vae"
    config.model.unet = ml_collections.ConfigDict()  # the architecture of config.pretrained.unet (or root/unet)
    config.data.crop_size = 256
    config.data.batch_size = 12
    config.compute_dtype = "bfloat16"
    t = config.train
    t.num_steps, t.learning_rate, t.warmup_steps, t.schedule = 45_000, 1e-5, 500, "constant"
    t.ema_decay = 0.9999
    t.log_every, t.checkpoint_every = 100, 5000
    config.evals.samples.every = config.evals.tables.every = 5000


def _apply_modifier(config: ml_collections.ConfigDict, modifier: str) -> None:
    name, _, value = modifier.partition("=")
    if name == "palette":
        config.model.conditioning = "concat"
    elif name == "no_labels":
        config.model.use_task_labels = False
    elif name == "mapping_depth" and value.isdigit():
        config.model.mapping.depth = int(value)
    elif name == "single" and value in TASKS:
        config.data.label_set = "single"
        config.data.tasks = (value,)
    elif name == "combinations":
        config.data.label_set = "combinations"
    else:
        raise ValueError(f"configs/multitask.py: unknown modifier {modifier!r}; allowed: palette, no_labels, "
                         f"mapping_depth=N, single=TASK (TASK in {TASKS}), combinations")


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | sd15 | tiny) followed by comma-separated modifiers."""
    preset, *modifiers = [part.strip() for part in (arg or "demo").split(",")]
    config = _base()
    presets = {"demo": _demo, "sd15": _sd15, "tiny": _tiny}
    if preset not in presets:
        raise ValueError(f"configs/multitask.py: unknown preset {preset!r}; allowed: {', '.join(presets)}")
    presets[preset](config)
    for modifier in modifiers:
        _apply_modifier(config, modifier)
    return config
