"""pix2pix (Isola et al. 2017) on the multitask data: the GAN baseline of the multitask paper (Tables 2-3).

`configs/pix2pix.py:PRESET` is `configs/multitask.py:PRESET` — the same data, evaluation sets, evaluators (the
sample grid; the L1 / PSNR / SSIM / grain tables beside the do-nothing arm) and number of steps — with
pix2pix's model and optimiser in place of the diffusion model's (editdiff/methods/pix2pix.py):

  demo (the default) — 64 px, the U-Net generator with 6 levels (down to 1x1), the 70x70 PatchGAN, both at
      half the paper's width (ngf = ndf = 32, 8.0M parameters), the multitask demo's 800 steps:

        python main.py --config configs/pix2pix.py --workdir runs/pix2pix

      Not yet timed on an idle machine; then `runs/pix2pix/eval/step_0000800.md`
      (model vs do-nothing per set, the multitask demo's tables) and sample grids in `runs/pix2pix/samples/`;
      the log shows loss_g_gan, loss_g_l1 and loss_d. The scores of a full run are not measured yet.

  sd15 — the paper's comparison setup: 256 px crops, batch 12, 45K steps; the generator is the paper's
      8-level `unet_256`, the discriminator the 70x70 PatchGAN (30x30 logits). No pretrained weights.

        python main.py --config configs/pix2pix.py:sd15 --workdir runs/pix2pix_sd15

  tiny — for tests and smoke runs: 16 px crops, ngf = ndf = 8, a 2-layer (34x34) PatchGAN (a 70x70 one has no
      output at 16 px), two steps.

The optimiser is the paper's where the trainer allows: Adam (train.adam_b1 = 0.5, adam_b2 = 0.999) at 2e-4, no
warm-up, no weight decay. The paper keeps the rate constant for half the run and then decays it linearly to 0;
the trainer has no linear decay (train.schedule: constant | cosine | exponential), so it stays constant. No
gradient clipping: one global-norm clip over G and D would couple their updates (Pix2PixMethod.loss). No EMA
(train.ema_decay = 0: the EMA is the raw weights), so the evaluators see the trained generator, as in the paper.

`--mode=edit` edits photos as the multitask method does (config.edit: the effects, tiles of edit.tile_size px).
Any key can be overridden on the command line, e.g. `--config.model.gan_loss=lsgan`.
"""
from __future__ import annotations

import ml_collections

from configs import multitask

PRESETS = ("demo", "sd15", "tiny")


def _model(normalise_strengths: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        ngf=64,  # generator filters in the first layer (C64-C128-C256-C512-...)
        ndf=64,  # discriminator filters in the first layer
        # U-Net levels; None: as many as the crop size halves to 1x1 (8 at 256 px, 6 at 64, 4 at 16).
        num_downs=ml_collections.config_dict.placeholder(int),
        discriminator_layers=3,  # stride-2 layers of the PatchGAN: 3 = 70x70 patches (34x34 at 2, 16x16 at 1)
        # "instance" = the paper's BatchNorm at batch size 1 with test-time batch statistics, per image at any
        # batch size and the same in training and evaluation; "batch" = BatchNorm with running statistics.
        norm="instance",
        dropout_rate=0.0,  # the paper's 0.5 in the first three decoder layers (training only here); 0 = off
        gan_loss="vanilla",  # the paper's non-saturating cross-entropy | "lsgan"
        l1_weight=100.0,  # lambda
        # C as the multitask model of the same preset reads it: beta, sigma, lambda, mu / their ranges' maxima.
        normalise_strengths=normalise_strengths,
    ))


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | sd15 | tiny)."""
    preset = (arg or "demo").strip()
    if preset not in PRESETS:
        raise ValueError(f"configs/pix2pix.py: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    config = multitask.get_config(preset)
    config.method = "pix2pix"
    config.model = _model(config.model.normalise_strengths)
    for key in ("diffusion", "sampler", "pretrained"):  # the diffusion model's: none of them applies here
        del config[key]
    config.compute_dtype = "float32"  # the paper's precision; 57M parameters at 256 px need no bfloat16
    t = config.train
    t.learning_rate, t.adam_b1, t.adam_b2, t.weight_decay = 2e-4, 0.5, 0.999, 0.0
    t.warmup_steps, t.schedule, t.grad_clip_norm, t.ema_decay = 0, "constant", 0.0, 0.0
    if preset == "demo":
        config.model.ngf = config.model.ndf = 32
    elif preset == "tiny":
        config.model.ngf = config.model.ndf = 8
        config.model.discriminator_layers = 2
    return config
