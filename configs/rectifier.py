"""The rectifier (editdiff/methods/rectifier.py, seed 001): reconstruction and editing training of a hypernetwork
that modulates a frozen U-Net's mid- and up-block convs. Presets after the colon (`configs/rectifier.py:tiny`),
optionally with the modifier `,edit`:

  demo (the default) — on the base that `configs/ldm.py` (demo) trains and exports (same photos, 32 px, patch
      latents, its schedule and x_0 prediction), a small rectifier (three BasicBlock stages of 32/64/128
      channels over the 16 x 16 x 24 concat(z_0, P_t), subnets of 64 channels to a 128-d code), Adam lr 1e-3,
      weight decay 1e-5, x0.9 every 5000 steps (the paper's), batch 8. The chain, from the repository root:

        python main.py --config configs/ldm.py --workdir runs/ldm
        python main.py --config configs/ldm.py --workdir runs/ldm --mode=export
        python main.py --config configs/rectifier.py --workdir runs/rectifier
        python main.py --config configs/rectifier.py --workdir runs/rectifier --mode=eval

      (`--config.pretrained.root=DIR` for another base; the default is runs/ldm/export.) Expect
      `runs/rectifier/eval/step_N.md`: sets reconstruction_10 / _20 / _50 (DDIM inversion and reverse pass
      with that many steps on the two held-out photos' crops), arms frozen and rectified, L1, L2, SSIM and the
      posterior-mean gap; and `runs/rectifier/reconstruction/step_N.png` (source, then each arm at each step
      count). Measured 2026-12-01 on an idle 2-core machine, on the base of the
      ldm demo (8 min 37 s, export 32 s): `python main.py --config configs/rectifier.py --workdir runs/rectifier`
      10 min 31 s wall (400 steps at ~1.3 steps/s, loss 0.113 at step 50 -> 0.051; the final evaluation ~4 min).
      Held-out crops (8), L1 / L2 / SSIM / posterior gap, frozen -> rectified:
        10 steps  0.1564 / 0.0395 / 0.516 / 0.087  ->  0.1136 / 0.0204 / 0.635 / 0.075
        20 steps  0.1565 / 0.0394 / 0.504 / 0.191  ->  0.1124 / 0.0196 / 0.635 / 0.155
        50 steps  0.1224 / 0.0234 / 0.573 / 0.418  ->  0.1133 / 0.0196 / 0.634 / 0.329
      (the rectified arm better on every metric at every step count; the --mode=eval line re-scores the newest
      checkpoint.) Then the export and the user's command:

        python main.py --config configs/rectifier.py --workdir runs/rectifier --mode=export
        python main.py --config configs/rectifier.py --workdir runs/rectifier --mode=edit --config.edit.input=PHOTO

      export (59 s): runs/rectifier/export/ with unet/, null_context/, scheduler/, rectifier/ (R as safetensors
      for editdiff/interop/rectifier.py's PyTorch module) and rectifier.json, whose torch_max_abs_error is the
      PyTorch rectified prediction (diffusers U-Net with R's offsets hooked onto the same convs) against JAX's:
      1.19e-06 for the demo. edit: PHOTO (or every photo of a folder) at the training scale (short side 32),
      inverted and sampled back with config.edit.num_steps DDIM steps (50) -> runs/rectifier/edit/{rectified,
      frozen,input,compare}/NAME.png (--config.edit.sampler=ddpm: the paper's ancestral reverse pass;
      --config.edit.strength=0.5: SDEdit with the rectifier, from the photo re-noised half way).

  demo,edit — the editing stage (the paper's Algorithm 1) warm-started from runs/rectifier: R (and its
      BatchNorm statistics) from that run, directional CLIP loss "photo" -> "sketch" + L1 on the decoded x_0
      estimate (weights 1 and 1), lr 1e-3 x0.9 every 10 steps, 100 steps, the editing table after the last.
      No CLIP weights exist on this machine: the chain writes a randomly initialised stand-in (the run's log
      says so; its CLIP numbers measure nothing semantic). With real weights: --config.objective.clip=DIR (a
      transformers CLIPModel directory with its tokenizer), other texts: --config.objective.target_text=....

        python -m editdiff.interop.random_clip runs/clip
        python main.py --config configs/rectifier.py:demo,edit --workdir runs/rectifier_edit
        python main.py --config configs/rectifier.py:demo,edit --workdir runs/rectifier_edit --mode=edit \
            --config.edit.input=$(python -c "import skimage.data, os; print(os.path.dirname(skimage.data.__file__))")/chelsea.png

      Measured 2026-12-01, idle 2-core machine: training 3 min 53 s (loss 0.767 at step 50 -> 0.604 at 100:
      direction loss 0.565 -> 0.391, L1 0.202 -> 0.213); runs/rectifier_edit/eval/step_0000100.md, 8 held-out
      crops at 20 DDIM steps, frozen -> edited: CLIP_direction -0.096 -> 0.081, L1 0.157 -> 0.124, L2 0.039 ->
      0.023, SSIM 0.504 -> 0.541, CLIP_image 0.951 -> 0.982 (the edited arm keeps the reconstruction R's
      fidelity; with a random CLIP, "sketch" is no look). --mode=edit: 1 min 12 s, the cat at 48 x 32 px
      -> runs/rectifier_edit/edit/{edited,frozen,input,compare}/chelsea.png; at that scale and aspect the
      32 px memorising base gives colour mush for both arms.

  ddpm — the paper's setup: a pixel-space DDPM backbone (a diffusers DDPMPipeline directory: unet/ a
      UNet2DModel such as google/ddpm-celebahq-256's, scheduler/; DDPM's linear schedule, epsilon prediction),
      256 px photos, R with the paper's ResNet-34 encoder over the 6-channel concat(x_0, P_t), the mid and up
      blocks modulated, 20000 steps, the reconstruction table every 5000. No such weights exist on this machine;
      the commands (bundled photos by default; a face folder as the paper:
      --config.data.source.kind=folder --config.data.source.folder=DIR):

        python main.py --config configs/rectifier.py:ddpm --config.pretrained.root=DDPM_DIR --workdir runs/rectifier_ddpm
        python main.py --config configs/rectifier.py:ddpm,edit --config.pretrained.root=DDPM_DIR \
            --config.objective.clip=CLIP_DIR --config.init_from.workdir=runs/rectifier_ddpm --workdir runs/ddpm_edit

      (tests/test_rectifier.py runs this path on a tiny random UNet2DModel: R learns, the export reproduces it.)

  sd15 — Stable Diffusion's latent space: a local StableDiffusionPipeline directory (unet/, vae/, text_encoder/,
      tokenizer/, scheduler/; SD's scaled-linear schedule, epsilon prediction) as the frozen base, run
      unconditionally with the empty prompt's CLIP encoding as its context (as DDIM inversion of SD is usually
      run); 512 px photos (64 x 64 x 4 latents), R with the paper's ResNet-34 encoder over the 8-channel
      concat(z_0, P_t), the mid and up blocks modulated, batch 4, bfloat16, 20000 steps, the reconstruction
      table every 5000. No SD weights exist on this machine; the commands (bundled photos by default):

        python main.py --config configs/rectifier.py:sd15 --config.pretrained.root=SD_DIR --workdir runs/rectifier_sd15
        python main.py --config configs/rectifier.py:sd15,edit --config.pretrained.root=SD_DIR \
            --config.objective.clip=CLIP_DIR --config.init_from.workdir=runs/rectifier_sd15 --workdir runs/sd15_edit

      (tests/test_rectifier.py runs this path on a tiny random pipeline directory: the context is the empty
      prompt's encoding as transformers computes it, R learns, the export reproduces it in PyTorch.)

  tiny — for tests: two steps, a one-stage rectifier on the mid block's convs only; the base is a test's tiny
      ldm export (`--config.pretrained.root`); `tiny,edit` its editing stage (`--config.objective.clip`).

Any key can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""
from __future__ import annotations

import ml_collections

from configs import ldm
from editdiff.methods.rectifier import (default_edit_config, default_model_config,
                                        default_objective_config, editing_entry, reconstruction_entry,
                                        rectifier_diffusion_config, rectifier_sampler_config)
from editdiff.pretrained import default_pretrained_config
from editdiff.train.config import default_train_config

DEMO_BASE = "runs/ldm/export"
DEMO_RECONSTRUCTION = "runs/rectifier"  # the reconstruction run an editing demo starts from
DEMO_CLIP = "runs/clip"  # python -m editdiff.interop.random_clip runs/clip: a stand-in (no CLIP weights here)


def _base(ldm_preset: str) -> ml_collections.ConfigDict:
    """The trainer's defaults, with the data and schedule of the ldm preset whose export is the base (the
    method checks the schedule against the export's scheduler config)."""
    base = ldm.get_config(ldm_preset)
    config = default_train_config()
    config.method = "rectifier"
    config.pretrained = default_pretrained_config()
    config.data = base.data
    config.model = default_model_config()
    config.objective = default_objective_config()
    config.edit = default_edit_config()
    config.diffusion = rectifier_diffusion_config()
    config.sampler = rectifier_sampler_config()
    ldm.use_base_schedule(config, ldm_preset)
    config.evals.reconstruction = reconstruction_entry()
    t = config.train
    t.learning_rate, t.weight_decay, t.schedule, t.decay_every, t.decay_rate = 1e-3, 1e-5, "exponential", 5000, 0.9
    t.warmup_steps = 0
    return config


def _demo() -> ml_collections.ConfigDict:
    config = _base("demo")
    config.pretrained.root = DEMO_BASE
    config.model.rectifier.update(stage_blocks=(1, 1, 1), base_channels=32, stem_stride=1, subnet_channels=64,
                                  code_dim=128, time_embedding_dim=64)
    t = config.train
    t.num_steps, t.ema_decay, t.log_every, t.checkpoint_every = 400, 0.99, 50, 200
    config.evals.reconstruction.update(every=0, num_images=8, batch_size=8)
    return config


def _ddpm() -> ml_collections.ConfigDict:
    config = _base("demo")
    config.pretrained.root = ""  # a DDPMPipeline directory (unet/ UNet2DModel, scheduler/): --config.pretrained.root
    config.diffusion.update(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                            prediction_type="epsilon")  # DDPM's (Ho et al.); the run checks them against the base's
    config.data.crop_size = config.data.resize_short_side = 256
    t = config.train
    t.num_steps, t.log_every, t.checkpoint_every = 20000, 100, 1000
    config.evals.reconstruction.update(every=5000, num_images=8, batch_size=4)
    return config


def _sd15() -> ml_collections.ConfigDict:
    config = _base("sd15")  # SD's schedule (scaled linear, epsilon) and DDIM settings, 512 px
    config.pretrained.root = ""  # a StableDiffusionPipeline directory: --config.pretrained.root
    config.data.source.kind = "bundled"  # or --config.data.source.kind=folder --config.data.source.folder=DIR
    config.data.batch_size = 4
    config.compute_dtype = "bfloat16"
    t = config.train
    t.num_steps, t.log_every, t.checkpoint_every = 20000, 100, 1000
    config.evals.reconstruction.update(every=5000, num_images=8, batch_size=4)
    return config


def _tiny() -> ml_collections.ConfigDict:
    config = _base("tiny")
    config.model.modulate = ("mid_block",)  # 4 of the tiny U-Net's 15 convs: a quicker compile
    config.model.rectifier.update(stage_blocks=(1,), base_channels=8, stem_stride=1, subnet_channels=8,
                                  code_dim=8, time_embedding_dim=8)
    config.sampler.num_steps = 2
    t = config.train
    t.num_steps, t.log_every, t.checkpoint_every, t.async_checkpointing = 2, 1, 1, False
    config.evals.reconstruction.update(num_steps=(2,), num_images=2, batch_size=2, grid_images=2)
    return config


def _edit(config: ml_collections.ConfigDict, preset: str) -> None:
    """The editing stage (Algorithm 1) on top of a preset: the CLIP objective, warm-started from the
    preset's reconstruction run, the paper's lr 1e-3 x0.9 every 10 steps, the editing table."""
    config.objective.update(kind="editing", source_text="photo", target_text="sketch")
    t = config.train
    t.learning_rate, t.schedule, t.decay_every, t.decay_rate = 1e-3, "exponential", 10, 0.9
    if preset == "tiny":
        config.evals = ml_collections.ConfigDict(dict(editing=editing_entry(num_steps=2, num_images=2, batch_size=2,
                                                                            grid_images=2)))
        config.edit.num_steps = 2
        return
    steps = 20 if preset == "demo" else 50  # the paper's 50; fewer for the CPU demo
    t.num_steps, t.checkpoint_every = 100, 100
    config.evals = ml_collections.ConfigDict(dict(editing=editing_entry(num_steps=steps, num_images=8,
                                                                        batch_size=config.evals.reconstruction.batch_size)))
    config.edit.num_steps = steps
    if preset == "demo":
        config.objective.clip = DEMO_CLIP
        config.init_from.workdir = DEMO_RECONSTRUCTION


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | ddpm | sd15 | tiny), optionally followed by the modifier `,edit` (the editing stage)."""
    preset, *modifiers = [part.strip() for part in (arg or "demo").split(",")]
    presets = {"demo": _demo, "ddpm": _ddpm, "sd15": _sd15, "tiny": _tiny}
    if preset not in presets:
        raise ValueError(f"configs/rectifier.py: unknown preset {preset!r}; allowed: {', '.join(presets)}")
    config = presets[preset]()
    for modifier in modifiers:
        if modifier != "edit":
            raise ValueError(f"configs/rectifier.py: unknown modifier {modifier!r}; allowed: edit")
        _edit(config, preset)
    return config
