"""Diff-Plugin (editdiff/methods/plugin.py, seed 002): a Task-Plugin per task on a frozen latent diffusion model.
Presets after the colon, then the task as a modifier (`configs/plugin.py:demo,desnow`; the default task is
derain). Tasks: desnow, dehaze, deblur, derain, lowlight, face, demoire, highlight (input_pipeline/degradations).

  demo (the default) — on the base that `configs/ldm.py` (demo) trains and exports (the bundled photos as 32 px
      thumbnails, patch latents, its schedule and x_0 prediction), the task's degradation synthesised on the
      fly, a plugin of the base's first stage (64 channels) over the tokens of a CLIP vision tower. No CLIP
      weights can be downloaded here: the demo uses a randomly initialised stand-in tower (the run's log says
      so), so the prompt branch reads random (but fixed, input-dependent) features. AdamW (weight decay
      1e-2), constant lr 1e-5 x the global batch 8 x 10 (the paper's rate times ten: the demo's budget is
      minutes), gradient clip 1.0, batch 8, 600 steps; UniPC 20 steps from the input re-noised at t = 999.
      The chain, from the repository root:

        python main.py --config configs/ldm.py --workdir runs/ldm
        python main.py --config configs/ldm.py --workdir runs/ldm --mode=export
        python -m editdiff.interop.random_clip runs/clip
        python main.py --config configs/plugin.py:demo,derain --workdir runs/plugin_derain
        python main.py --config configs/plugin.py:demo,desnow --workdir runs/plugin_desnow
        python main.py --config configs/plugin.py:demo,lowlight --workdir runs/plugin_lowlight

      Expect `runs/plugin_TASK/eval/step_0000600.md`: set TASK (8 held-out crops of the two held-out photos,
      degraded with fixed seeds), arms input (the degraded crop returned unchanged), frozen (the base without a
      plugin, same sampler and start) and plugin, PSNR and SSIM; `runs/plugin_TASK/restoration/step_N.png`
      (degraded, frozen, plugin, clean). Measured 2026-12-01 on the 2-core machine: lowlight, trained with
      nothing else running, 6 min 27 s wall (~2 steps/s; derain and desnow shared the machine with tests, so
      their times are not quoted); loss 0.084 at step 50 -> 0.032 / 0.033 / 0.036 at 600 (derain / desnow /
      lowlight). PSNR / SSIM on the 8 held-out crops:

                    input            frozen          plugin
        derain      21.10 / 0.815     8.80 / 0.052    16.15 / 0.574
        desnow      23.23 / 0.856     8.81 / 0.052    14.71 / 0.482
        lowlight     9.08 / 0.222     8.76 / 0.050    15.77 / 0.542   (pure-noise start, as the authors')

      The plugin is far better than the frozen base from the same start (which, from noise, draws one of its
      seven memorised photos) and beats the untouched input for low light; for rain and snow, which leave a 32 px
      crop mostly intact, the input stays better: the plugin's output is the photo's colours and layout but
      blurred, as this base (trained on seven photos) reconstructs a held-out photo no better, whatever the
      plugin. A partial start keeps no more (`--mode=eval --config.plugin.strength=0.5`, set "derain @ strength
      0.5": plugin 15.66 / 0.566, frozen 12.43 / 0.156). With SD-1.4 (`sd14`) the base is a general image model.
      Then the user's command and the export:

        python main.py --config configs/plugin.py:demo,derain --workdir runs/plugin_derain --mode=edit \\
            --config.edit.input=PHOTO_OR_FOLDER
        python main.py --config configs/plugin.py:demo,derain --workdir runs/plugin_derain --mode=export

      edit: runs/plugin_derain/edit/{derain,frozen,input,compare}/NAME.png at the training scale (short side
      32); export: runs/plugin_derain/export/plugin/ (config.json + safetensors for
      editdiff/interop/task_plugin.py's PyTorch module) and plugin.json with torch_max_abs_error, the PyTorch
      plugin prediction (transformers CLIP, the plugin, the diffusers U-Net) against JAX's: 1.49e-06 for the
      derain demo (export 27 s; edit of the 451 x 300 cat photo, resized to 48 x 32, 25 s).

  demo,selector — the Plugin-Selector over the three demo plugins (runs/plugin_derain, _desnow, _lowlight, each
      loaded frozen through config.frozen_from): its heads (Dense 128 -> 128 over each plugin's max-pooled prompt,
      Dense 64 -> 128 over the instruction's pooled CLIP text embedding, the logit scale) trained with eq. 6's
      contrastive loss, 7 negatives, on the training phrasings of input_pipeline/instructions.py (8 of the 10 per task; 2
      held out); AdamW lr 1e-3 constant (our choice: the authors never released this training), batch 8, 300
      steps. The random stand-in CLIP holds the text tower too, so the instructions' embeddings are random but
      fixed functions of their bytes: held-out phrasings measure nothing semantic here.

        python main.py --config configs/plugin.py:demo,selector --workdir runs/plugin_selector
        python main.py --config configs/plugin.py:demo,selector --workdir runs/plugin_selector --mode=edit \
            --config.edit.input=PHOTO --config.edit.instruction="remove the rain"

      Expect runs/plugin_selector/eval/step_0000300.md: sets held-out phrasings and training phrasings, arms
      selector and untrained (fresh heads), ZTA, mAP, CP, CR, CF1, OP, OR, OF1. edit: the plugins the instruction
      selects (score >= config.selector.threshold = 0), chained (the first with 20 UniPC steps, the later ones
      with config.selector.later_steps = 3) -> runs/plugin_selector/edit/{edited,input,compare}/NAME.png and
      edit/summary/NAME.json (every plugin's score, the chain); an instruction no plugin matches edits nothing
      and the log says so. --config.edit.plugins=derain,desnow runs that chain without the selector.
      Measured 2026-12-01, 2-core machine: training 55 s wall (loss -> -17.3 at step 300, the decoupled eq. 6
      is unbounded below until the logit-scale clamp; the positive phrasing ranked first among 8 in 98% of the
      last 50 steps' examples). runs/plugin_selector/eval/step_0000300.md, untrained -> selector:
        training phrasings   ZTA 0.09 -> 0.77, mAP 0.32 -> 0.98, CF1 0.24 -> 0.89, OF1 0.29 -> 0.88
        held-out phrasings   ZTA 0.17 -> 0.33, mAP 0.46 -> 0.61, CF1 0.33 -> 0.44, OF1 0.40 -> 0.43
      (held-out phrasings: what a random text tower can carry over between sentences of similar bytes; with
      CLIP's own text tower they measure understanding.) edit, 41 s: "please remove the rain" on the cat photo
      -> scores derain 0.309, lowlight 0.176, desnow -0.679: the chain derain -> lowlight.

  sd14 — the paper's setup: a local Stable Diffusion 1.4 pipeline directory (--config.pretrained.root) and a
      CLIP ViT-L/14 directory (--config.pretrained.image_encoder; 256 patch tokens of width 1024), 512 px,
      bfloat16, batch 64 as the paper (lower it and the rate scales with it: lr = 1e-5 x batch), 20000 steps:

        python main.py --config configs/plugin.py:sd14,derain --config.pretrained.root=SD14_DIR \\
            --config.pretrained.image_encoder=CLIP_L14_DIR --workdir runs/plugin_sd14_derain

      Real paired data instead of the synthesised degradation: a paired-folder source (README, "Paired
      restoration datasets").

  tiny — for tests: 16 px crops, two steps, two sampling steps; the base is a test's tiny ldm export
      (`--config.pretrained.root`), the CLIP tower a test's tiny random one (`--config.pretrained.image_encoder`).

Any key can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""
from __future__ import annotations

import ml_collections

from configs import ldm
from editdiff.methods import plugin_selector
from editdiff.methods.plugin import (TASKS, default_edit_config, default_inference_config, default_model_config,
                                     default_plugin_config, plugin_diffusion_config, plugin_sampler_config,
                                     restoration_entry)
from editdiff.pretrained import default_pretrained_config
from editdiff.train.config import default_train_config, frozen_from_entry

DEMO_BASE = "runs/ldm/export"
DEMO_CLIP = "runs/clip"  # python -m editdiff.interop.random_clip runs/clip: a stand-in (no CLIP weights here)
DEMO_TASKS = ("derain", "desnow", "lowlight")  # the demo chain's plugins, runs/plugin_TASK
PAPER_LEARNING_RATE = 1e-5  # per example of the global batch (the authors scale it by the batch size)


def _base(ldm_preset: str, task: str) -> ml_collections.ConfigDict:
    """The trainer's defaults, with the data and schedule of the ldm preset whose export is the base (the
    method checks the schedule against the export's scheduler config), and the paper's optimiser."""
    base = ldm.get_config(ldm_preset)
    config = default_train_config()
    config.method = "plugin"
    config.pretrained = default_pretrained_config()
    config.data = base.data
    config.plugin = default_plugin_config(task)
    config.model = default_model_config()
    config.edit = default_edit_config()
    config.diffusion = plugin_diffusion_config()
    config.sampler = plugin_sampler_config()
    ldm.use_base_schedule(config, ldm_preset, sampler_grid=False)  # UniPC on the authors' own linspace grid
    config.evals.restoration = restoration_entry()
    t = config.train
    t.weight_decay, t.grad_clip_norm, t.schedule, t.warmup_steps = 1e-2, 1.0, "constant", 0
    t.learning_rate = PAPER_LEARNING_RATE * config.data.batch_size
    return config


def _demo(task: str) -> ml_collections.ConfigDict:
    config = _base("demo", task)
    config.pretrained.root = DEMO_BASE
    config.pretrained.image_encoder = DEMO_CLIP
    t = config.train
    t.learning_rate = 10 * PAPER_LEARNING_RATE * config.data.batch_size
    t.num_steps, t.ema_decay, t.log_every, t.checkpoint_every = 600, 0.99, 50, 300
    config.evals.restoration.update(every=0, num_images=8, batch_size=8)
    return config


def _sd14(task: str) -> ml_collections.ConfigDict:
    config = _base("sd15", task)  # SD-1.x's schedule (scaled linear, epsilon), 512 px
    config.pretrained.root = ""  # a StableDiffusionPipeline directory (SD-1.4): --config.pretrained.root
    config.data.source.kind = "bundled"  # or a folder / a paired-folder source
    config.data.batch_size = 64
    config.compute_dtype = "bfloat16"
    t = config.train
    t.learning_rate = PAPER_LEARNING_RATE * config.data.batch_size
    t.num_steps, t.log_every, t.checkpoint_every = 20000, 100, 1000
    config.evals.restoration.update(every=5000, num_images=16, batch_size=8)
    return config


def _tiny(task: str) -> ml_collections.ConfigDict:
    config = _base("tiny", task)
    config.sampler.num_steps = 2
    t = config.train
    t.learning_rate = 1e-3
    t.num_steps, t.log_every, t.checkpoint_every, t.async_checkpointing = 2, 1, 1, False
    config.evals.restoration.update(num_images=2, batch_size=2, grid_images=2)
    return config


def plugin_runs(config: ml_collections.ConfigDict, workdirs: dict[str, str]) -> None:
    """Sets config.selector.tasks and one config.frozen_from.TASK per plugin run {task: workdir}: the run's
    plugins.TASK becomes this model's frozen plugins.TASK."""
    config.selector.tasks = tuple(workdirs)
    for task, workdir in workdirs.items():
        config.frozen_from[task] = frozen_from_entry(workdir, source=f"plugins.{task}", target=f"plugins.{task}")


def _selector(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """The Plugin-Selector over the preset's plugin runs: its heads train alone (AdamW, lr 1e-3 constant, our
    choice: the authors never released theirs), the selection table after the last step."""
    config.method = "plugin_selector"
    config.plugin = default_inference_config()
    config.selector = plugin_selector.default_selector_config()
    config.edit = plugin_selector.default_edit_config()
    config.evals = ml_collections.ConfigDict(dict(selection=plugin_selector.selection_entry()))
    t = config.train
    t.learning_rate, t.weight_decay = 1e-3, 1e-2
    if preset == "demo":
        plugin_runs(config, {task: f"runs/plugin_{task}" for task in DEMO_TASKS})
        t.num_steps, t.checkpoint_every = 300, 300
        config.evals.selection.update(num_images=4, batch_size=8)
    elif preset == "tiny":  # the test names the plugin runs: plugin_runs(config, {...})
        t.learning_rate, t.ema_decay = 1e-2, 0.8  # a few dozen steps must show in the EMA heads the table scores
        config.evals.selection.update(num_images=2, batch_size=2)
    else:
        t.num_steps, t.checkpoint_every = 5000, 1000
        config.evals.selection.update(every=1000, num_images=16, batch_size=16)
    return config


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """`arg` = preset (demo | sd14 | tiny), then a task (`,derain` by default) or `,selector` (the selector over
    the preset's plugin runs)."""
    preset, *modifiers = [part.strip() for part in (arg or "demo").split(",")]
    presets = {"demo": _demo, "sd14": _sd14, "tiny": _tiny}
    if preset not in presets:
        raise ValueError(f"configs/plugin.py: unknown preset {preset!r}; allowed: {', '.join(presets)}")
    allowed = (*TASKS, "selector")
    if len(modifiers) > 1 or any(m not in allowed for m in modifiers):
        raise ValueError(f"configs/plugin.py: modifiers {modifiers!r} are invalid; allowed: one of "
                         f"{', '.join(allowed)}")
    if modifiers == ["selector"]:
        return _selector(presets[preset]("derain"), preset)
    return presets[preset](modifiers[0] if modifiers else "derain")
