"""The trainer's mechanics on CPU with a tiny regression method: one step, 8-device sharding, resume,
SIGTERM, NaN, invalid configs, corrupt checkpoints, frozen parameters."""
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from editdiff.methods.base import Method
from editdiff.train.build import load_trained_model
from editdiff.train.checkpoint import Checkpointer, CheckpointRestoreError
from editdiff.train.config import default_train_config
from editdiff.train.hooks import PeriodicHooks
from editdiff.train.loop import NonFiniteLossError, TrainOutcome, train_and_evaluate
from editdiff.train.optimizer import create_optimizer
from editdiff.train.state import init_train_state, split_model

FEATURES = 8
NUM_STEPS = 6


class TinyRegressor(nnx.Module):
    """A frozen random projection (stands in for a pretrained VAE) under a trainable two-layer head."""

    def __init__(self, rngs: nnx.Rngs):
        self.frozen_encoder = nnx.Linear(FEATURES, 16, rngs=rngs)
        self.head = nnx.Sequential(nnx.Linear(16, 32, rngs=rngs), nnx.gelu, nnx.Linear(32, 2, rngs=rngs))

    def __call__(self, x):
        return self.head(self.frozen_encoder(x))


class TinyRegression(Method):
    """Regresses y = x @ W from noisy x; the noise comes from the step's key, so resume must reproduce it."""

    def init_model(self, rngs):
        return TinyRegressor(rngs)

    @property
    def trainable(self):
        return nnx.All(nnx.Param, nnx.PathContains("head"))

    def loss(self, model, batch, rng):
        x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
        loss = jnp.mean(jnp.square(model(x) - batch["y"]))
        return loss, {"batch_checksum": jnp.sum(batch["x"])}

    def sample(self, model, batch, rng):
        return model(batch["x"])

    def dummy_batch(self, batch_size):
        return {"x": np.zeros((batch_size, FEATURES), np.float32), "y": np.zeros((batch_size, 2), np.float32)}


def synthetic_batches(data_config, *, start_step, process_index, process_count):
    """Batch k is a pure function of (seed, k, process); `nan_at_batch` poisons one batch."""
    target = np.random.default_rng(data_config.seed).normal(size=(FEATURES, 2)).astype(np.float32)
    local_size = data_config.batch_size // process_count
    step = start_step
    while True:
        x = np.random.default_rng([data_config.seed, step, process_index]).normal(size=(local_size, FEATURES))
        x = x.astype(np.float32)
        y = x @ target
        if step == data_config.nan_at_batch:
            x[0, 0] = np.nan
        yield {"x": x, "y": y}
        step += 1


def tiny_config(**mesh):
    config = default_train_config()
    config.train.num_steps = NUM_STEPS
    config.train.learning_rate = 1e-2
    config.train.warmup_steps = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 2
    config.train.ema_decay = 0.5
    config.mesh.data = mesh.get("data", 1)
    config.mesh.fsdp = mesh.get("fsdp", 1)
    config.mesh.fsdp_min_size = 16  # small enough that the head's kernels are sharded over fsdp
    config.data = ml_collections.ConfigDict({"seed": 3, "batch_size": 16, "nan_at_batch": -1})
    return config


class Recorder(PeriodicHooks):
    """Per-step metrics, and the model view after the last step."""

    def __init__(self, stop_at_step=None):
        self.metrics = {}
        self.final_view = None
        self.stop_at_step = stop_at_step

    def on_metrics(self, step, metrics):
        self.metrics[step] = dict(metrics)
        if step == self.stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_eval(self, view):
        self.final_view = view

    def column(self, name):
        return {step: m[name] for step, m in self.metrics.items()}


def run(config, workdir, recorder=None):
    recorder = recorder or Recorder()
    outcome = train_and_evaluate(
        config, str(workdir), method=TinyRegression(config), create_train_iterator=synthetic_batches,
        hooks=[recorder],
    )
    return outcome, recorder


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted one-device run of NUM_STEPS steps."""
    workdir = tmp_path_factory.mktemp("reference")
    outcome, recorder = run(tiny_config(), workdir)
    return workdir, outcome, recorder


def test_one_device_run_trains_and_checkpoints(reference):
    workdir, outcome, recorder = reference
    assert outcome.step == NUM_STEPS and not outcome.preempted
    losses = recorder.column("loss")
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[NUM_STEPS] < losses[1]
    assert recorder.metrics[1]["learning_rate"] == pytest.approx(5e-3)  # half-way through the warm-up
    assert os.path.isfile(workdir / "config.json")
    assert Checkpointer(str(workdir), keep=2, every=2).all_steps() == [4, 6]  # keeps the newest 2


def test_only_trainable_parameters_change_and_hold_optimizer_state(reference):
    config = tiny_config()
    method = TinyRegression(config)
    initial = method.init_model(nnx.Rngs(config.seed))
    _, params, _ = split_model(initial, method.trainable)
    state = init_train_state(params, create_optimizer(config.train))
    adam_state = state.opt_state[1][0]  # chain(clip, adamw) -> adamw = chain(scale_by_adam, ...)
    trainable_paths = {path for path, _ in nnx.to_flat_state(params)}
    assert {path for path, _ in nnx.to_flat_state(adam_state.mu)} == trainable_paths
    assert all(path[0] == "head" for path in trainable_paths)

    trained = reference[2].final_view.model(ema=False)
    np.testing.assert_array_equal(trained.frozen_encoder.kernel[...], initial.frozen_encoder.kernel[...])
    assert not np.allclose(trained.head.layers[0].kernel[...], initial.head.layers[0].kernel[...])


def test_rerunning_a_finished_run_trains_nothing(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "run")
    outcome, recorder = run(tiny_config(), tmp_path / "run")
    assert outcome == TrainOutcome(step=NUM_STEPS, preempted=False) and not recorder.metrics


def test_load_trained_model_restores_the_newest_checkpoint(reference, tmp_path):
    config = tiny_config()
    model, step = load_trained_model(config, str(reference[0]), method=TinyRegression(config))
    assert step == NUM_STEPS
    expected = reference[2].final_view.model(ema=True)
    for (path, got), (_, want) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(expected))):
        np.testing.assert_array_equal(got[...], want[...], err_msg=str(path))
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        load_trained_model(config, str(tmp_path), method=TinyRegression(config))


def test_sharded_run_matches_one_device_and_profiles(reference, tmp_path):
    assert jax.device_count() == 8
    config = tiny_config(data=4, fsdp=2)
    config.train.profile_steps = 1
    outcome, recorder = run(config, tmp_path)
    assert outcome.step == NUM_STEPS
    assert os.listdir(tmp_path / "plugins" / "profile")
    expected = reference[2]
    np.testing.assert_allclose(list(recorder.column("loss").values()),
                               list(expected.column("loss").values()), rtol=1e-5)
    assert recorder.column("batch_checksum") == pytest.approx(expected.column("batch_checksum"))
    kernel = recorder.final_view.run.state.params["head"]["layers"][0]["kernel"][...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert len(kernel.sharding.device_set) == 8


def test_sigterm_saves_and_restart_resumes_exactly(reference, tmp_path):
    stop_at = 3
    outcome, first = run(tiny_config(), tmp_path, Recorder(stop_at_step=stop_at))
    assert outcome.preempted and outcome.step == stop_at
    assert Checkpointer(str(tmp_path), keep=2, every=2).all_steps() == [2, 3]

    outcome, second = run(tiny_config(), tmp_path)
    assert not outcome.preempted and outcome.step == NUM_STEPS
    assert sorted(second.metrics) == list(range(stop_at + 1, NUM_STEPS + 1))
    expected = reference[2]
    for name in ("loss", "batch_checksum"):
        resumed = {**first.column(name), **second.column(name)}
        np.testing.assert_allclose([resumed[s] for s in range(1, NUM_STEPS + 1)],
                                   [expected.column(name)[s] for s in range(1, NUM_STEPS + 1)], rtol=1e-6)


CHILD_RUN = """
import sys
sys.path.insert(0, {tests_dir!r})
import test_train_loop as t

class ReportSteps(t.PeriodicHooks):
    def on_metrics(self, step, metrics):
        print("step", step, flush=True)

config = t.tiny_config()
config.train.num_steps = 100_000
outcome = t.train_and_evaluate(config, {workdir!r}, method=t.TinyRegression(config),
                               create_train_iterator=t.synthetic_batches, hooks=[ReportSteps()])
print("outcome", outcome.step, outcome.preempted, flush=True)
"""


def test_sigterm_from_outside_exits_cleanly_with_a_checkpoint(tmp_path, caplog):
    script = CHILD_RUN.format(tests_dir=os.path.dirname(__file__), workdir=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in child.stdout:  # wait until training is under way
        if line.startswith("step 3"):
            break
    child.send_signal(signal.SIGTERM)
    remaining, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    outcome = remaining.strip().splitlines()[-1].split()
    assert outcome[0] == "outcome" and outcome[2] == "True"
    stopped_at = int(outcome[1])
    assert Checkpointer(str(tmp_path), keep=2, every=2).latest_step() == stopped_at

    config = tiny_config()
    config.train.num_steps = stopped_at + 2
    with caplog.at_level(logging.WARNING):
        _, recorder = run(config, tmp_path)
    assert sorted(recorder.metrics) == [stopped_at + 1, stopped_at + 2]
    assert f"train.num_steps: 100000 -> {stopped_at + 2}" in caplog.text  # the resumed run's config change


def test_nan_loss_stops_with_last_good_checkpoint_intact(reference, tmp_path):
    config = tiny_config()
    config.data.nan_at_batch = 4  # the batch of step 5
    with pytest.raises(NonFiniteLossError, match=r"at step 5.*\(step 4\) is the last good one"):
        run(config, tmp_path)
    assert Checkpointer(str(tmp_path), keep=2, every=2).all_steps() == [2, 4]

    outcome, resumed = run(tiny_config(), tmp_path)
    assert outcome.step == NUM_STEPS
    np.testing.assert_allclose(resumed.column("loss")[5], reference[2].column("loss")[5], rtol=1e-6)


def corrupt_checkpoint(workdir, step):
    for root, _, files in os.walk(workdir / "checkpoints" / str(step)):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")


def test_corrupt_latest_checkpoint_falls_back_loudly(reference, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    corrupt_checkpoint(workdir, 6)
    config = tiny_config()
    config.train.num_steps = 8
    with caplog.at_level(logging.ERROR):
        outcome, recorder = run(config, workdir)
    assert "CHECKPOINT AT STEP 6" in caplog.text
    assert sorted(recorder.metrics) == [5, 6, 7, 8]  # resumed from step 4
    np.testing.assert_allclose(recorder.column("loss")[5], reference[2].column("loss")[5], rtol=1e-6)
    assert os.path.isdir(workdir / "corrupt_checkpoints" / "6")


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for step in (4, 6):
        corrupt_checkpoint(workdir, step)
    with pytest.raises(CheckpointRestoreError, match=r"refusing to start from scratch(.|\n)*step 6: (.|\n)*step 4: "):
        run(tiny_config(), workdir)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # left in place for inspection


class MustNotBuild(TinyRegression):
    def init_model(self, rngs):
        raise AssertionError("the model was built before the config was validated")


@pytest.mark.parametrize("key, value, message", [
    ("train.schedule", "linear", r"config\.train\.schedule = 'linear' is invalid; allowed: one of 'constant'"),
    ("train.num_steps", 0, r"config\.train\.num_steps = 0 is invalid; allowed: an integer >= 1"),
    ("mesh.data", 16, r"config\.mesh\.data = 16, config\.mesh\.fsdp = 1 asks for 16 devices"),
])
def test_invalid_config_fails_before_building_anything(tmp_path, key, value, message):
    config = tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(
            config, str(tmp_path), method=MustNotBuild(config), create_train_iterator=synthetic_batches
        )
