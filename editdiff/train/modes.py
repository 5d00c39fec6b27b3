"""What `main.py --mode=...` does, as library functions that tests call directly.

    train    train (resuming from WORKDIR's checkpoints) with periodic sample grids and evaluation tables
    eval     the evaluation tables of the newest checkpoint's EMA model -> WORKDIR/eval/
    sample   a sample grid of the newest checkpoint's EMA model -> WORKDIR/samples/
    export   the newest checkpoint's EMA model as PyTorch-loadable directories -> WORKDIR/export/
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections
from clu import metric_writers

from editdiff.train.build import load_trained_model, method_from_config
from editdiff.train.edit_reports import EditReports
from editdiff.train.loop import TrainOutcome, train_and_evaluate

MODES = ("train", "eval", "sample", "export")


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainOutcome:
    """Trains with sample grids every `train.sample_every` and evaluation every `train.eval_every` steps (and
    after the last step) on the method's fixed evaluation sets."""
    method = method_from_config(config)
    eval_sets = method.eval_sets()
    hooks = [EditReports(eval_sets, seed=config.seed)] if eval_sets else []
    return train_and_evaluate(config, workdir, method=method, hooks=hooks)


def _report(config: ml_collections.ConfigDict, workdir: str, write):
    """Restores the newest checkpoint's EMA model and calls `write` (an EditReports writer) on it."""
    method = method_from_config(config)
    model, step = load_trained_model(config, workdir, method=method)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)
    reports = EditReports(method.eval_sets(), seed=config.seed)
    result = write(reports, step, workdir, writer, method, model)
    writer.flush()
    return result


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes WORKDIR/eval/step_N.{json,md} for the newest checkpoint's EMA model; returns the scores."""
    return _report(config, workdir, EditReports.write_tables)


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes WORKDIR/samples/step_N.png for the newest checkpoint's EMA model; returns its path."""
    return _report(config, workdir, EditReports.write_grid)


def export(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Exports the newest checkpoint's EMA model to WORKDIR/export/; returns the paths written."""
    method = method_from_config(config)
    model, step = load_trained_model(config, workdir, method=method)
    written = method.export(model, os.path.join(workdir, "export"))
    logging.info("Exported step %d: %s", step, ", ".join(written))
    return written


def run(config: ml_collections.ConfigDict, workdir: str, mode: str):
    """Dispatches `mode` (one of MODES)."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is invalid; allowed: {', '.join(MODES)}")
    return {"train": train, "eval": evaluate, "sample": sample, "export": export}[mode](config, workdir)
