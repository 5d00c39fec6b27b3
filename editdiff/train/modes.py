"""What `main.py --mode=...` does, as library functions that tests call directly.

    train    train (resuming from WORKDIR's checkpoints) with the method's periodic evaluators
    eval     every evaluator of `config.evals` on the newest checkpoint's EMA model -> WORKDIR/eval/, ...
    sample   the evaluators that write sample grids -> WORKDIR/samples/
    export   the newest checkpoint's EMA model as PyTorch-loadable directories -> WORKDIR/export/
    edit     the newest checkpoint's EMA model on config.edit.input (an image or a folder) -> WORKDIR/edit/

eval, sample, export and edit only read the workdir (no lock, no optimiser state), so they work while a training
run is writing it.
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections
from clu import metric_writers, periodic_actions
from flax import nnx

from editdiff.config_checks import ConfigError
from editdiff.methods.base import Method
from editdiff.train import edit_io
from editdiff.train import mesh as mesh_lib
from editdiff.train.build import load_trained_model, method_class
from editdiff.train.compilation_cache import enable_compilation_cache
from editdiff.train.config import validate_config
from editdiff.train.distributed import initialize_distributed
from editdiff.train.loop import TrainOutcome, run_evaluators, train_and_evaluate
from input_pipeline.images import SkipLog, UnreadableImage, load_image

MODES = ("train", "eval", "sample", "export", "edit")


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainOutcome:
    """Trains with the method's evaluators (config.evals)."""
    return train_and_evaluate(config, workdir)


def _restored(config: ml_collections.ConfigDict, workdir: str) -> tuple[Method, nnx.Module, int]:
    """The method and the newest checkpoint's EMA model, after validating the config and joining the job."""
    validate_config(config, method_class(config))
    enable_compilation_cache(config)
    initialize_distributed(config)
    method = method_class(config)(config)
    model, step = load_trained_model(config, workdir, method, mesh_lib.create_mesh(config.mesh))
    return method, model, step


def _evaluate(config: ml_collections.ConfigDict, workdir: str, *, samples_only: bool) -> dict:
    method, model, step = _restored(config, workdir)
    evaluators = [e for e in method.evaluators() if e.writes_samples or not samples_only]
    if not evaluators:
        raise ConfigError(f"config.evals names no {'sample grid ' if samples_only else ''}evaluator of the "
                         f"{config.method} method; allowed kinds: {', '.join(method.evaluator_kinds)}")
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)
    results = run_evaluators(evaluators, model, step, workdir, writer)
    writer.flush()
    return results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every evaluator on the newest checkpoint's EMA model; returns {evaluator name: its result}."""
    return _evaluate(config, workdir, samples_only=False)


def sample(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the sample-grid evaluators on the newest checkpoint's EMA model; returns {name: PNG path}."""
    return _evaluate(config, workdir, samples_only=True)


def export(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Exports the newest checkpoint's EMA model to WORKDIR/export/; returns the paths written."""
    method, model, step = _restored(config, workdir)
    model.eval()
    written = method.export(model, os.path.join(workdir, "export"))
    logging.info("Exported step %d: %s", step, ", ".join(written))
    return written


def edit(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Edits config.edit.input (an image, or every image below a folder) with the newest checkpoint's EMA model
    (`Method.edit`). Per input NAME (its path below the folder, or its file name), writes OUTPUT/LABEL/NAME.png
    for each result the method returns, and OUTPUT/compare/NAME.png: the results side by side under their
    labels. OUTPUT is config.edit.output ("" = WORKDIR/edit). Unreadable files are skipped, logged and counted.
    Returns {"written": [paths], "skipped": {path: reason}}."""
    if not config.edit.input:
        raise ConfigError("config.edit.input = '' is invalid for --mode=edit; allowed: an image file or a folder of "
                         "images (e.g. --config.edit.input=photo.png)")
    if method_class(config).edit is Method.edit:  # before any checkpoint is read or program compiled
        raise ConfigError(f"--mode=edit: the {config.method!r} method has no edit command; allowed modes: "
                         f"{', '.join(m for m in MODES if m != 'edit')}")
    inputs = edit_io.list_inputs(config.edit.input)
    method, model, step = _restored(config, workdir)
    model.eval()
    output = config.edit.output or os.path.join(workdir, "edit")
    written, skipped = [], SkipLog()
    progress = periodic_actions.ReportProgress(num_train_steps=len(inputs), every_steps=1)  # images/s and ETA
    for done, (name, path) in enumerate(inputs, start=1):
        try:
            image = load_image(path) * 2.0 - 1.0
        except UnreadableImage as error:
            skipped.add(path, str(error))
            continue
        results = method.edit(model, image)
        if jax.process_index() == 0:
            written += edit_io.write_results(output, name, results)
            summary = method.edit_summary()
            if summary is not None:
                written.append(edit_io.write_summary(output, name, summary))
        progress(done)
    logging.info("Edited %d of %d images with step %d into %s; %d unreadable file(s) skipped",
                 len(inputs) - len(skipped), len(inputs), step, output, len(skipped))
    return {"written": written, "skipped": skipped.as_dict()}


def run(config: ml_collections.ConfigDict, workdir: str, mode: str):
    """Dispatches `mode` (one of MODES)."""
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r} is invalid; allowed: {', '.join(MODES)}")
    return {"train": train, "eval": evaluate, "sample": sample, "export": export, "edit": edit}[mode](config, workdir)
