"""The multitask paper's comparison (seed 000, Tables 2-4) in one command:

    python -m editdiff.studies.multitask --workdir runs/study --preset demo [--num_steps N] [--arms a,b,...]

trains every arm on the same data with the same budget (the preset's steps, or `--num_steps`), each in
WORKDIR/arms/ARM, and scores all of them on the preset's fixed evaluation sets (5 single tasks, 4 combinations)
with the multitask tables' metrics, beside the do-nothing arm: WORKDIR/eval/step_N.{json,md} (N = the budget),
sets = rows of the paper's tables, arms = its methods. Arms (configs/multitask.py and configs/pix2pix.py):

    ours             the multitask model (cross-attention editing vector, task labels, mapping depth 2)
    palette          Palette++: the editing vector broadcast and concatenated, no cross-attention
    ours-single      five single-task models (`single=TASK`); a combination applies them one after another in
                     the data's compositing order (blur, colour, sharpen, grain), each on the previous output
    pix2pix          the GAN baseline with the same inputs
    no-labels        ours without the binary task labels (Table 4)
    mapping-depth-1, mapping-depth-3   the mapping network's depth (Table 4)

Resumable arm by arm: an arm whose run has its final evaluation is not trained again; an interrupted arm resumes
from its last checkpoint. Each arm's own run also writes its sample grids and tables in its workdir.

Expect at demo scale (`--preset demo --num_steps 200`, measured 2026-12-03 on a 2-core CPU: 50 min 23 s wall,
the test suite sharing the cores for 22 of them, about 3 min 20 s per arm alone): the multi-task model ahead of
the single-task models in sequence on all four combinations and of Palette++ on three (level on
blur+grain+colour), pix2pix last; the specialised single-task models ahead on the single tasks; no diffusion arm
past do-nothing on blur or sharpening at this budget (the table: benchmarks/RESULTS.md, issue 14 item 4).
"""
from __future__ import annotations

import argparse
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging

from configs import multitask as multitask_configs
from configs import pix2pix as pix2pix_configs
from editdiff.methods import multitask
from editdiff.methods.reports import ModelFunction
from editdiff.train import mesh as mesh_lib
from editdiff.train import modes
from editdiff.train.build import load_trained_model, method_class
from input_pipeline.config import TASKS

ARMS = ("ours", "palette", "ours-single", "pix2pix", "no-labels", "mapping-depth-1", "mapping-depth-3")
_MODIFIERS = {"ours": "", "palette": ",palette", "no-labels": ",no_labels", "mapping-depth-1": ",mapping_depth=1",
              "mapping-depth-3": ",mapping_depth=3"}
SEQUENCE_ORDER = ("inpaint", "blur", "colour", "sharpen", "grain")  # input_pipeline.tasks' compositing order


def arm_config(arm: str, preset: str, num_steps: int | None, task: str | None = None) -> ml_collections.ConfigDict:
    """The config of one arm (of one single-task model for ours-single) with the study's step budget."""
    if arm == "pix2pix":
        config = pix2pix_configs.get_config(preset)
    elif arm == "ours-single":
        config = multitask_configs.get_config(f"{preset},single={task}")
    else:
        config = multitask_configs.get_config(preset + _MODIFIERS[arm])
    if num_steps:
        config.train.num_steps = num_steps
    return config


def _final_scores(workdir: str, step: int) -> str:
    return os.path.join(workdir, "eval", f"step_{step:07d}.json")


def train_arm(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains (or resumes) one run unless its final evaluation exists."""
    if os.path.isfile(_final_scores(workdir, config.train.num_steps)):
        logging.info("study: %s is trained (its step-%d evaluation exists)", workdir, config.train.num_steps)
        return
    logging.info("study: training %s for %d steps", workdir, config.train.num_steps)
    modes.train(config, workdir)


def _restored(config: ml_collections.ConfigDict, workdir: str):
    method = method_class(config)(config)
    model, _ = load_trained_model(config, workdir, method, mesh_lib.create_mesh(config.mesh))
    model.eval()
    return method, model


def _edited_by(config: ml_collections.ConfigDict, workdir: str, eval_sets: dict, seed: int) -> dict[str, np.ndarray]:
    """One arm's edits of every set {set: (N, H, W, 3) in [-1, 1]}, sampled as its own evaluator does."""
    method, model = _restored(config, workdir)
    sample = ModelFunction(method.sample)
    return {name: np.asarray(sample(model, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(seed)))
            for name, batch in eval_sets.items()}


def single_task_step(batch: dict[str, np.ndarray], current: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """The input of the `task` model in a sequence: the previous output as the source, only `task` on in C."""
    i = TASKS.index(task)
    labels = np.zeros_like(batch["task_labels"])
    labels[:, i] = 1.0
    strengths = {"blur": [0], "grain": [1], "sharpen": [2, 3]}.get(task, [])
    edit = np.zeros_like(batch["edit_vector"])
    edit[:, strengths] = batch["edit_vector"][:, strengths]
    edit[:, 4:] = labels
    return {"source": current, "target": batch["target"],
            "reference": batch["reference"] if task == "colour" else np.zeros_like(batch["reference"]),
            "mask": batch["mask"] if task == "inpaint" else np.ones_like(batch["mask"]),
            "edit_vector": edit, "task_labels": labels}


def apply_in_sequence(batch: dict[str, np.ndarray], edit_fns: dict, order: tuple[str, ...] = SEQUENCE_ORDER) -> np.ndarray:
    """A set's edits by single-task editors `edit_fns` {task: fn(step batch, k) -> (N, H, W, 3)}, one after
    another in `order`, each on the previous output (the set's tasks are those of its first example's labels)."""
    current = batch["source"]
    on = [task for task in order if batch["task_labels"][0, TASKS.index(task)]]
    for k, task in enumerate(on):
        current = np.asarray(edit_fns[task](single_task_step(batch, current, task), k))
    return current


def _edited_in_sequence(preset: str, num_steps: int | None, workdir: str, eval_sets: dict,
                        seed: int) -> dict[str, np.ndarray]:
    """ours-single: each set edited by its tasks' single-task models one after another (SEQUENCE_ORDER)."""
    edit_fns = {}
    for task in TASKS:
        method, model = _restored(arm_config("ours-single", preset, num_steps, task), os.path.join(workdir, task))
        sample = ModelFunction(method.sample)
        edit_fns[task] = (lambda step_batch, k, sample=sample, model=model: sample(
            model, {key: jnp.asarray(v) for key, v in step_batch.items()}, jax.random.fold_in(jax.random.key(seed), k)))
    return {name: apply_in_sequence(batch, edit_fns) for name, batch in eval_sets.items()}


def run_study(workdir: str, preset: str, *, num_steps: int | None = None, arms: tuple[str, ...] = ARMS) -> dict:
    """Trains the arms and writes WORKDIR/eval/step_N.{json,md}; returns {set: {arm: {metric: value}}}."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"--arms {','.join(unknown)} is invalid; allowed: {', '.join(ARMS)}")
    reference = arm_config("ours", preset, num_steps)
    runs = [(arm, task) for arm in arms for task in (TASKS if arm == "ours-single" else (None,))]
    for i, (arm, task) in enumerate(runs, start=1):
        logging.info("study: run %d of %d: %s%s", i, len(runs), arm, f" ({task})" if task else "")
        arm_dir = os.path.join(workdir, "arms", arm, *([task] if task else []))
        train_arm(arm_config(arm, preset, num_steps, task), arm_dir)

    eval_sets = multitask.MultitaskMethod(reference).eval_sets()
    edited = {}
    for arm in arms:
        arm_dir = os.path.join(workdir, "arms", arm)
        if arm == "ours-single":
            edited[arm] = _edited_in_sequence(preset, num_steps, arm_dir, eval_sets, reference.seed)
        else:
            edited[arm] = _edited_by(arm_config(arm, preset, num_steps), arm_dir, eval_sets, reference.seed)
    scores = multitask.edit_scores(edited, eval_sets)
    path = multitask.write_edit_scores(workdir, reference.train.num_steps, scores)
    logging.info("study: %d arms scored on %d sets: %s and its .md", len(arms), len(eval_sets), path)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", default="demo", help="a configs/multitask.py preset: demo, sd15, tiny")
    parser.add_argument("--num_steps", type=int, default=None, help="the training budget of every arm")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.INFO)  # the trainer's progress (steps/s, ETA) and the study's
    absl_logging.use_absl_handler()
    run_study(args.workdir, args.preset, num_steps=args.num_steps, arms=tuple(a for a in args.arms.split(",") if a))


if __name__ == "__main__":
    main()
