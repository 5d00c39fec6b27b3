"""The trainer's mechanics on CPU with the tiny regression method (tests/tiny_method.py): one step, 8-device
sharding, BatchNorm state, resume, SIGTERM, SIGKILL during an async save, NaN, corrupt checkpoints, a changed
config, the workdir lock, evaluating a live run, compile-once, invalid configs."""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.train import mesh as mesh_lib
from editdiff.train import modes
from editdiff.train.build import ConfigChangedError, load_trained_model
from editdiff.train.checkpoint import Checkpointer, CheckpointRestoreError
from editdiff.train.hooks import PeriodicHooks
from editdiff.train.loop import NonFiniteLossError, TrainOutcome, train_and_evaluate
from editdiff.train.optimizer import create_optimizer
from editdiff.train.state import TrainState, init_train_state, split_model
from editdiff.train.workdir_lock import LOCK_NAME, WorkdirLockedError
from tiny_method import NUM_STEPS, TinyRegression, tiny_config

TESTS_DIR = os.path.dirname(__file__)


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

    def on_end(self, view):
        self.final_view = view

    def column(self, name):
        return {step: m[name] for step, m in self.metrics.items()}


def run(config, workdir, recorder=None, method=None):
    recorder = recorder or Recorder()
    outcome = train_and_evaluate(config, str(workdir), method=method or TinyRegression(config), hooks=[recorder])
    return outcome, recorder


def checkpoint_steps(workdir):
    return Checkpointer(str(workdir), read_only=True).all_steps()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted one-device run of NUM_STEPS steps."""
    workdir = tmp_path_factory.mktemp("reference")
    outcome, recorder = run(tiny_config(), workdir)
    return workdir, outcome, recorder


def test_one_device_run_trains_checkpoints_and_evaluates(reference):
    workdir, outcome, recorder = reference
    assert outcome.step == NUM_STEPS and not outcome.preempted
    losses = recorder.column("loss")
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[NUM_STEPS] < losses[1]
    assert recorder.metrics[1]["learning_rate"] == pytest.approx(5e-3)  # half-way through the warm-up
    assert os.path.isfile(workdir / "config.json")
    assert checkpoint_steps(workdir) == [4, 6]  # keeps the newest 2
    assert not os.path.exists(workdir / LOCK_NAME)  # released at exit
    with open(workdir / "eval" / "step_0000006.json") as f:
        written = json.load(f)
    assert written["step"] == 6 and set(written["scores"]["held_out"]) == {"model", "zero"}
    assert "| zero |" in open(workdir / "eval" / "step_0000006.md").read()


def test_only_trainable_parameters_change_and_hold_optimizer_state(reference):
    config = tiny_config()
    method = TinyRegression(config)
    initial = method.init_model(nnx.Rngs(config.seed))
    _, params, model_state, _ = split_model(initial, method.trainable)
    state = init_train_state(params, model_state, create_optimizer(config.train))
    adam_state = state.opt_state[1][0]  # chain(clip, adamw) -> adamw = chain(scale_by_adam, ...)
    trainable_paths = {path for path, _ in nnx.to_flat_state(params)}
    assert {path for path, _ in nnx.to_flat_state(adam_state.mu)} == trainable_paths
    assert all(path[0] == "head" for path in trainable_paths)

    trained = reference[2].final_view.model(ema=False)
    np.testing.assert_array_equal(trained.frozen_encoder.kernel[...], initial.frozen_encoder.kernel[...])
    assert not np.allclose(trained.head.layers[0].kernel[...], initial.head.layers[0].kernel[...])


def test_batchnorm_statistics_update_through_the_step_and_survive_a_resume(reference, tmp_path):
    def running_mean(workdir, step):
        return np.asarray(Checkpointer(str(workdir), read_only=True).read_part(step, "model_state")
                          ["head"]["layers"]["1"]["mean"]["value"])

    initial = np.asarray(TinyRegression(tiny_config()).init_model(nnx.Rngs(0)).head.layers[1].mean[...])
    at_4, at_6 = running_mean(reference[0], 4), running_mean(reference[0], 6)
    assert not np.allclose(at_4, initial) and not np.allclose(at_6, at_4)  # updated by every training step

    config = tiny_config()
    config.train.num_steps = 4
    run(config, tmp_path)  # stops at 4, then resumes to 6
    _, resumed = run(tiny_config(), tmp_path)
    np.testing.assert_allclose(running_mean(tmp_path, 6), at_6, rtol=1e-6)
    final = reference[2].final_view.model().head.layers[1].mean[...]
    np.testing.assert_allclose(resumed.final_view.model().head.layers[1].mean[...], final, rtol=1e-6)


def test_rerunning_a_finished_run_trains_nothing(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "run")
    outcome, recorder = run(tiny_config(), tmp_path / "run")
    assert outcome == TrainOutcome(step=NUM_STEPS, preempted=False) and not recorder.metrics


def test_load_trained_model_restores_ema_and_model_state_without_optimizer_state(reference, tmp_path):
    config = tiny_config()
    method = TinyRegression(config)
    mesh = mesh_lib.create_mesh(config.mesh)
    model, step = load_trained_model(config, str(reference[0]), method, mesh)
    assert step == NUM_STEPS
    expected = reference[2].final_view.model(ema=True)
    for (path, got), (_, want) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(expected))):
        got, want = got[...], want[...]
        if jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key):  # the Dropout's key
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(got, want, err_msg=str(path))
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        load_trained_model(config, str(tmp_path), method, mesh)


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
    # The same batches; the checksum's float32 sum is reduced in another order over the sharded batch.
    assert recorder.column("batch_checksum") == pytest.approx(expected.column("batch_checksum"), rel=1e-5)
    kernel = recorder.final_view.run.state.params["head"]["layers"][0]["kernel"][...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert len(kernel.sharding.device_set) == 8


def test_sigterm_saves_and_restart_resumes_exactly(reference, tmp_path):
    stop_at = 3
    outcome, first = run(tiny_config(), tmp_path, Recorder(stop_at_step=stop_at))
    assert outcome.preempted and outcome.step == stop_at
    assert checkpoint_steps(tmp_path) == [2, 3]

    outcome, second = run(tiny_config(), tmp_path)
    assert not outcome.preempted and outcome.step == NUM_STEPS
    assert sorted(second.metrics) == list(range(stop_at + 1, NUM_STEPS + 1))
    expected = reference[2]
    for name in ("loss", "batch_checksum"):
        resumed = {**first.column(name), **second.column(name)}
        np.testing.assert_allclose([resumed[s] for s in range(1, NUM_STEPS + 1)],
                                   [expected.column(name)[s] for s in range(1, NUM_STEPS + 1)], rtol=1e-6)


CHILD_RUN = """
import os, signal, sys, time
sys.path.insert(0, {tests_dir!r})
from editdiff.train import checkpoint
from editdiff.train.hooks import PeriodicHooks
from editdiff.train.loop import train_and_evaluate
from tiny_method import TinyRegression, tiny_config

KILL_DURING_SAVE_OF = {kill_during_save_of!r}
save = checkpoint.Checkpointer.save
def save_then_maybe_die(self, step, state, *, force=False):
    started = save(self, step, state, force=force)
    if step == KILL_DURING_SAVE_OF:  # the asynchronous write of this step is under way
        os.kill(os.getpid(), signal.SIGKILL)
    return started
checkpoint.Checkpointer.save = save_then_maybe_die

class ReportSteps(PeriodicHooks):
    def on_metrics(self, step, metrics):
        print("step", step, flush=True)
        time.sleep({sleep!r})

config = tiny_config()
config.train.num_steps = {num_steps!r}
config.train.async_checkpointing = True
outcome = train_and_evaluate(config, {workdir!r}, method=TinyRegression(config), hooks=[ReportSteps()])
print("outcome", outcome.step, outcome.preempted, flush=True)
"""


def start_child(workdir, *, num_steps=100_000, kill_during_save_of=None, sleep=0.0):
    script = CHILD_RUN.format(tests_dir=TESTS_DIR, workdir=str(workdir), num_steps=num_steps,
                              kill_during_save_of=kill_during_save_of, sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def wait_for_step(child, step):
    for line in child.stdout:
        if line.startswith(f"step {step}"):
            return
    raise AssertionError(f"the child run ended before step {step}")


def test_sigterm_from_outside_exits_cleanly_with_a_checkpoint(tmp_path, caplog):
    child = start_child(tmp_path)
    wait_for_step(child, 3)
    child.send_signal(signal.SIGTERM)
    remaining, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    outcome = remaining.strip().splitlines()[-1].split()
    assert outcome[0] == "outcome" and outcome[2] == "True"
    stopped_at = int(outcome[1])
    assert Checkpointer(str(tmp_path), read_only=True).latest_step() == stopped_at

    config = tiny_config()
    config.train.num_steps = stopped_at + 2
    with caplog.at_level(logging.WARNING):
        _, recorder = run(config, tmp_path)
    assert sorted(recorder.metrics) == [stopped_at + 1, stopped_at + 2]
    assert f"train.num_steps: 100000 -> {stopped_at + 2}" in caplog.text  # the resumed run's config change
    assert os.path.isfile(tmp_path / "config.previous.json")


def test_sigkill_during_an_async_save_resumes_from_the_newest_complete_checkpoint(reference, tmp_path):
    child = start_child(tmp_path, num_steps=NUM_STEPS, kill_during_save_of=4)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    complete = checkpoint_steps(tmp_path)
    assert complete and complete[-1] in (2, 4)  # step 4's write was cut off, or had just finished
    assert not os.path.exists(tmp_path / "corrupt_checkpoints")

    outcome, resumed = run(tiny_config(), tmp_path)  # the killed run's lock is stale: taken over
    assert outcome.step == NUM_STEPS
    assert min(resumed.metrics) == complete[-1] + 1
    for step in resumed.metrics:
        np.testing.assert_allclose(resumed.column("loss")[step], reference[2].column("loss")[step], rtol=1e-6)


def test_a_live_run_holds_its_workdir_and_can_be_evaluated(tmp_path):
    child = start_child(tmp_path, sleep=0.2)
    try:
        wait_for_step(child, 5)
        holder = json.load(open(tmp_path / LOCK_NAME))
        assert holder["pid"] == child.pid and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirLockedError, match=rf"held by another training run .*PID {child.pid}"):
            run(tiny_config(), tmp_path)
        scores = modes.evaluate(tiny_config(), str(tmp_path))["held_out"]  # reads while the run writes
        assert set(scores["held_out"]) == {"model", "zero"}
        assert set(modes.export(tiny_config(), str(tmp_path))) == {str(tmp_path / "export" / "head.json")}
    finally:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=120)
    assert child.returncode == 0 and not os.path.exists(tmp_path / LOCK_NAME)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(tmp_path, exist_ok=True)
    with open(tmp_path / LOCK_NAME, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "start_time": "earlier"}, f)
    config = tiny_config()
    config.train.num_steps = 2
    with caplog.at_level(logging.WARNING):
        outcome, _ = run(config, tmp_path)
    assert outcome.step == 2 and "Taking over the stale lock" in caplog.text


def test_nan_loss_stops_with_last_good_checkpoint_intact(reference, tmp_path):
    config = tiny_config()
    config.data.nan_at_batch = 4  # the batch of step 5
    with pytest.raises(NonFiniteLossError, match=r"at step 5.*\(step 4\) is the last good one"):
        run(config, tmp_path)
    assert checkpoint_steps(tmp_path) == [2, 4]

    outcome, resumed = run(tiny_config(), tmp_path)
    assert outcome.step == NUM_STEPS
    np.testing.assert_allclose(resumed.column("loss")[5], reference[2].column("loss")[5], rtol=1e-6)


def test_nan_between_log_boundaries_is_caught_before_the_next_save(tmp_path):
    config = tiny_config()
    config.train.log_every = 100  # only the checkpoint boundaries bring the loss to the host
    config.data.nan_at_batch = 2  # the batch of step 3
    with pytest.raises(NonFiniteLossError, match=r"at step 3"):
        run(config, tmp_path)
    assert checkpoint_steps(tmp_path) == [2]


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


def test_a_changed_model_config_is_a_short_error_and_changes_nothing(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    saved_config = open(workdir / "config.json").read()
    config = tiny_config()
    config.model.hidden = 24
    with pytest.raises(ConfigChangedError) as error:
        run(config, workdir)
    message = str(error.value)
    print(message)
    assert len(message.splitlines()) < 20
    assert "model.hidden: 32 -> 24" in message
    assert "head.layers.0.kernel" in message and "stored (16, 32), requested (16, 24)" in message
    assert checkpoint_steps(workdir) == [4, 6] and not os.path.exists(workdir / "corrupt_checkpoints")
    assert open(workdir / "config.json").read() == saved_config  # written only after a successful restore


class CountingTraces(TinyRegression):
    traces = 0

    def loss(self, model, batch, rng):
        CountingTraces.traces += 1
        return super().loss(model, batch, rng)


def test_the_train_step_and_the_evaluator_compile_once(tmp_path):
    config = tiny_config()
    config.evals.held_out.every = 2
    method = CountingTraces(config)
    [evaluator] = method.evaluators()
    method.evaluators = lambda: [evaluator]
    run(config, tmp_path, method=method)
    assert CountingTraces.traces == 1
    assert evaluator.predict.traces == 1  # evaluated at steps 2, 4 and 6
    assert sorted(os.listdir(tmp_path / "eval")) == [f"step_{s:07d}.{e}" for s in (2, 4, 6) for e in ("json", "md")]


class MustNotBuild(TinyRegression):
    def init_model(self, rngs):
        raise AssertionError("the model was built before the config was validated")


@pytest.mark.parametrize("key, value, message", [
    ("train.schedule", "linear", r"config\.train\.schedule = 'linear' is invalid; allowed: one of 'constant'"),
    ("train.num_steps", 0, r"config\.train\.num_steps = 0 is invalid; allowed: an integer >= 1"),
    ("train.shedule", "cosine", r"config\.train\.shedule is not a known key"),
    ("evals.held_out.kind", "fid", r"config\.evals\.held_out\.kind = 'fid' is invalid; allowed: one of "
                                   r"'held_out_error'"),
    ("mesh.data", 16, r"config\.mesh\.data = 16, config\.mesh\.fsdp = 1 asks for 16 devices"),
])
def test_invalid_config_fails_before_building_anything(tmp_path, key, value, message):
    config = tiny_config()
    *parents, name = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, str(tmp_path), method=MustNotBuild(config))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_every_problem_is_listed_at_once(tmp_path):
    config = tiny_config()
    config.train.num_steps, config.train.decay_rate, config.data.batch_size = -1, 2.0, 0
    with pytest.raises(ValueError) as error:
        train_and_evaluate(config, str(tmp_path), method=MustNotBuild(config))
    for key in ("train.num_steps", "train.decay_rate", "data.batch_size"):
        assert f"config.{key} = " in str(error.value)



CACHED_RUN = """
import sys
sys.path.insert(0, {tests_dir!r})
import jax
import jax.numpy as jnp
from editdiff.train.loop import train_and_evaluate
from tiny_method import TinyRegression, tiny_config

hits = []
jax.monitoring.register_event_listener(lambda event, **kwargs: hits.append(event)
                                       if event == "/jax/compilation_cache/cache_hits" else None)
config = tiny_config()
config.compilation_cache_dir = {cache!r}
config.train.num_steps = 2
train_and_evaluate(config, {workdir!r}, method=TinyRegression(config))
print("cache hits", len(hits), flush=True)
"""


def test_a_second_run_of_the_same_config_reads_its_programs_from_the_compilation_cache(tmp_path):
    hits = []
    for run_index in range(2):
        script = CACHED_RUN.format(tests_dir=TESTS_DIR, cache=str(tmp_path / "cache"),
                                   workdir=str(tmp_path / f"run{run_index}"))
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert output.returncode == 0, output.stderr[-2000:]
        hits.append(int(output.stdout.strip().splitlines()[-1].split()[-1]))
    assert os.listdir(tmp_path / "cache")
    assert hits[0] == 0 and hits[1] >= 1  # at least the train step came from the cache


def test_a_reader_of_a_live_run_lists_again_when_the_run_prunes_its_checkpoint_meanwhile(tmp_path, monkeypatch):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    weights = lambda k: {"w": jnp.full((3,), float(k))}  # noqa: E731
    state = lambda k: TrainState(step=jnp.asarray(k), params=weights(k), opt_state=(), ema_params=weights(k),  # noqa: E731
                                 model_state={})
    writer = Checkpointer(str(tmp_path), keep=1, async_save=False)
    writer.save(2, state(2))
    writer.wait_until_finished()
    reader = Checkpointer(str(tmp_path), read_only=True)
    assert reader.all_steps() == [2]
    read = reader.restore

    def run_moves_on_before_the_read(step, abstract):
        if step == 2 and os.path.isdir(tmp_path / "checkpoints" / "2"):
            writer.save(4, state(4))  # keep=1: step 2 is deleted, as a live run with keep_checkpoints does
            writer.wait_until_finished()
        return read(step, abstract)

    monkeypatch.setattr(reader, "restore", run_moves_on_before_the_read)
    abstract = {"ema_params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding)}}
    step, parts = reader.restore_latest(abstract)
    assert step == 4 and float(parts["ema_params"]["w"][0]) == 4.0
    writer.close()


def test_a_reader_opening_a_live_run_lists_again_when_a_step_vanishes_while_listing(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    writer = Checkpointer(str(tmp_path), keep=1, async_save=False)
    writer.save(2, TrainState(step=jnp.asarray(2), params={"w": jnp.ones(3)}, opt_state=(),
                              ema_params={"w": jnp.ones(3)}, model_state={}))
    writer.wait_until_finished()
    opened, calls = ocp.CheckpointManager, []

    def pruned_during_the_first_listing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # what orbax raises when it stats a step the live run just deleted
            raise FileNotFoundError(str(tmp_path / "checkpoints" / "1"))
        return opened(*args, **kwargs)

    monkeypatch.setattr(ocp, "CheckpointManager", pruned_during_the_first_listing)
    assert Checkpointer(str(tmp_path), read_only=True).all_steps() == [2] and len(calls) == 2
    with pytest.raises(FileNotFoundError):  # a writer never hides it
        calls.clear()
        Checkpointer(str(tmp_path), keep=1)
    writer.close()
