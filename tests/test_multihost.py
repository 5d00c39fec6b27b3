"""Multi-host training that starts: the config.distributed keys and their checks, and two processes on
localhost (4 CPU devices each, gloo collectives) that join through config.distributed and train one
(data=4, fsdp=2) mesh over all 8 devices with train_and_evaluate.

Checked against a one-process 8-device run of the same config (in this process): the per-step losses agree;
each process drew its own disjoint rows of every global batch, together the whole batch; both write one
checkpoint directory in the shared workdir; a second launch of both with more steps resumes from it and
continues the uninterrupted run's losses, ending with the same model (EMA, raw parameters, BatchNorm
statistics) and the same evaluation scores. A worker that fails or hangs fails the test with both logs.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

import multihost_worker as worker
from editdiff.train import distributed
from editdiff.train.checkpoint import Checkpointer

NUM_PROCESSES = 2
FIRST_STEPS, ALL_STEPS = 4, 6
# One launch takes 15-35 s on two busy cores (imports, joining, compiling); a hung collective or coordinator
# must fail the test, never hang CI.
LAUNCH_TIMEOUT_S = 150
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(compilation_cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        # 4 devices per process, 8 in the job; fast-compiling CPU code, as conftest.py sets for the suite.
        XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        # The second launch compiles the same programs as the first: reuse them (saves most of its compile).
        JAX_COMPILATION_CACHE_DIR=compilation_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def _tail(path, lines=60) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


class Launch:
    """NUM_PROCESSES workers of one job training to `num_steps`, started at construction; `wait()` returns
    their reports (by process id). Fails (after killing every worker) when one exits with an error or the
    launch exceeds its timeout, printing each worker's log."""

    def __init__(self, workdir, num_steps: int, logdir, name: str):
        self.name = name
        coordinator = f"127.0.0.1:{_free_port()}"
        env = _worker_env(str(logdir / "compilation_cache"))
        env["JAX_COORDINATOR_BIND_ADDRESS"] = coordinator  # JAX's default binds every interface ([::]:port)
        self.processes, self.logs, self.reports = [], [], []
        for process_id in range(NUM_PROCESSES):
            self.logs.append(logdir / f"{name}_process_{process_id}.log")
            self.reports.append(logdir / f"{name}_process_{process_id}.json")
            with open(self.logs[-1], "w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, WORKER, "--coordinator", coordinator, "--num_processes", str(NUM_PROCESSES),
                     "--process_id", str(process_id), "--workdir", str(workdir), "--num_steps", str(num_steps),
                     "--report", str(self.reports[-1])],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                ))
        self.deadline = time.monotonic() + LAUNCH_TIMEOUT_S

    def wait(self) -> list[dict]:
        problem = None
        try:
            while problem is None and any(p.poll() is None for p in self.processes):
                if any(p.returncode not in (None, 0) for p in self.processes):
                    problem = "a worker failed"  # the others would wait for it until their own timeouts
                elif time.monotonic() > self.deadline:
                    problem = f"timed out after {LAUNCH_TIMEOUT_S} s"
                else:
                    time.sleep(0.2)
            if problem is None and any(p.returncode != 0 for p in self.processes):
                problem = "a worker failed"
        finally:
            self.kill()
        if problem:
            details = "\n".join(
                f"--- process {i} (exit code {p.returncode}), last lines of {log}:\n{_tail(log)}"
                for i, (p, log) in enumerate(zip(self.processes, self.logs))
            )
            pytest.fail(f"{self.name} launch: {problem}\n{details}", pytrace=False)
        result = []
        for path in self.reports:
            with open(path) as f:
                result.append(json.load(f))
        return result

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def _column(report: dict, name: str) -> dict[int, float]:
    return {int(step): metrics[name] for step, metrics in report["metrics"].items()}


def _reference_run(workdir):
    """The same job as one process over this process's 8 devices, uninterrupted to ALL_STEPS: its
    MetricsRecorder (metrics, final state) and the global batches it drew."""
    config = worker.job_config(ALL_STEPS)
    method = worker.GlobalBatchRegression(config)
    recorder = worker.MetricsRecorder()
    worker.train(config, str(workdir), method, recorder)
    return recorder, method.drawn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both processes train to FIRST_STEPS in a shared workdir (meanwhile this process runs the reference),
    exit, and are launched again to ALL_STEPS."""
    logdir = tmp_path_factory.mktemp("multihost")
    workdir = logdir / "workdir"
    first_launch = Launch(workdir, FIRST_STEPS, logdir, "first")
    try:
        reference = _reference_run(logdir / "reference")
    except BaseException:
        first_launch.kill()
        raise
    first = first_launch.wait()
    steps_after_first = Checkpointer(str(workdir), keep=2, every=2).all_steps()
    second = Launch(workdir, ALL_STEPS, logdir, "second").wait()
    with np.load(logdir / "second_process_0.json.final_state.npz") as final_state:
        final_state = dict(final_state)
    return dict(workdir=workdir, first=first, steps_after_first=steps_after_first, second=second,
                final_state=final_state, reference=reference, reference_workdir=logdir / "reference")


def test_both_processes_join_one_job_over_all_devices(runs):
    for reports in (runs["first"], runs["second"]):
        assert [r["process_index"] for r in reports] == list(range(NUM_PROCESSES))
        for report in reports:
            assert report["process_count"] == NUM_PROCESSES
            assert (report["device_count"], report["local_device_count"]) == (8, 4)


def test_two_process_losses_equal_the_one_process_run(runs):
    expected = runs["reference"][0].metrics
    assert sorted(expected) == list(range(1, ALL_STEPS + 1))
    for process_id in range(NUM_PROCESSES):
        for name in ("loss", "grad_norm", "batch_checksum"):
            got = {**_column(runs["first"][process_id], name), **_column(runs["second"][process_id], name)}
            assert sorted(got) == list(range(1, ALL_STEPS + 1)), name
            np.testing.assert_allclose(
                [got[s] for s in sorted(got)], [expected[s][name] for s in sorted(got)], rtol=1e-5,
                err_msg=f"{name} of process {process_id}",
            )


def _eval_scores(workdir) -> dict[int, dict]:
    scores = {}
    for name in os.listdir(workdir / "eval"):
        if name.endswith(".json"):
            with open(workdir / "eval" / name) as f:
                table = json.load(f)
            scores[table["step"]] = table["scores"]
    return scores


def _flat_scores(scores: dict) -> dict[tuple[str, str, str], float]:
    return {(name, arm, metric): value for name, arms in scores.items() for arm, metrics in arms.items()
            for metric, value in metrics.items()}


def test_resumed_two_process_model_and_evaluation_equal_the_one_process_run(runs):
    """The EMA and raw parameters and BatchNorm statistics after the resumed run, and the evaluation of
    the last step (every process evaluates the sharded model; process 0 writes the table)."""
    expected = runs["reference"][0].final_state
    assert sorted(runs["final_state"]) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(runs["final_state"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    got, want = _eval_scores(runs["workdir"]), _eval_scores(runs["reference_workdir"])
    assert ALL_STEPS in got and ALL_STEPS in want
    assert _flat_scores(got[ALL_STEPS]) == pytest.approx(_flat_scores(want[ALL_STEPS]), rel=1e-5)


def test_each_process_reads_its_own_disjoint_part_of_every_batch(runs):
    expected_batches = runs["reference"][1]  # batch index -> the whole global batch (one process)
    launches = ((runs["first"], range(FIRST_STEPS)), (runs["second"], range(FIRST_STEPS, ALL_STEPS)))
    for reports, batch_indices in launches:
        for report in reports:  # from the resumed step on, consecutive; the trainer may prefetch a few more
            drawn = sorted(int(k) for k in report["drawn"])
            assert drawn == list(range(batch_indices[0], drawn[-1] + 1)) and drawn[-1] >= batch_indices[-1]
        for k in batch_indices:
            parts = [np.asarray(r["drawn"][str(k)], np.float32) for r in reports]
            assert all(len(part) == len(expected_batches[k]) // NUM_PROCESSES for part in parts)
            rows = [{row.tobytes() for row in part} for part in parts]
            assert not rows[0] & rows[1], f"batch {k}: both processes drew the same rows"
            np.testing.assert_array_equal(np.concatenate(parts), expected_batches[k], err_msg=f"batch {k}")


def test_one_shared_checkpoint_directory_and_both_resume_from_it(runs):
    assert runs["steps_after_first"] == [2, FIRST_STEPS]
    for report in runs["first"]:
        assert report["outcome"] == {"step": FIRST_STEPS, "preempted": False}
    for report in runs["second"]:
        assert report["outcome"] == {"step": ALL_STEPS, "preempted": False}
        assert sorted(int(s) for s in report["metrics"]) == list(range(FIRST_STEPS + 1, ALL_STEPS + 1))
    workdir = runs["workdir"]
    assert Checkpointer(str(workdir), keep=2, every=2).all_steps() == [FIRST_STEPS, ALL_STEPS]
    assert sorted(name for name in os.listdir(workdir) if "checkpoint" in name) == ["checkpoints"]


def _config(**distributed_keys) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"distributed": distributed.default_distributed_config()})
    config.distributed.update(distributed_keys)
    return config


def test_default_distributed_config_is_valid_and_joins_nothing():
    assert distributed.initialize_distributed(_config()) is False
    assert not jax.distributed.is_initialized()


def test_invalid_distributed_keys_are_all_named_before_joining():
    config = _config(initialize=True, coordinator_address="10.0.0.1", num_processes=2, local_device_ids=(0, 0))
    with pytest.raises(ValueError) as error:
        distributed.initialize_distributed(config)
    message = str(error.value)
    assert "config.distributed.coordinator_address = '10.0.0.1' is invalid; allowed: '' (auto-detect) or " \
           "'host:port'" in message
    assert "config.distributed.local_device_ids = (0, 0) is invalid; allowed: None (auto) or a non-empty list " \
           "of distinct integers >= 0" in message
    config = _config(initialize=True, coordinator_address="[::1]:1234", num_processes=2)
    with pytest.raises(ValueError, match=r"num_processes = 2, config\.distributed\.process_id = None.*both set"):
        distributed.initialize_distributed(config)
    config.distributed.process_id = 2
    with pytest.raises(ValueError, match=r"process_id = 2 is invalid; allowed: an integer in \[0, .*= 2\)"):
        distributed.initialize_distributed(config)
    with pytest.raises(ValueError, match=r"num_processes = 2 has no effect while config\.distributed\.initialize "
                                         r"= False"):
        distributed.initialize_distributed(_config(num_processes=2, process_id=0))


def test_joining_after_the_backend_started_says_so():
    jax.devices()  # this process runs JAX already, as a single process
    config = _config(initialize=True, coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0)
    with pytest.raises(RuntimeError, match="already initialised its JAX backend as a single process"):
        distributed.initialize_distributed(config)
    assert not jax.distributed.is_initialized()


class _FakeInitialize:
    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)


@pytest.fixture
def fake_join(monkeypatch):
    """jax.distributed.initialize recorded instead of called, as in a fresh process."""
    fake = _FakeInitialize()
    monkeypatch.setattr(jax.distributed, "initialize", fake)
    monkeypatch.setattr(distributed.xla_bridge, "backends_are_initialized", lambda: False)
    return fake


def test_only_the_keys_set_reach_jax_and_the_rest_is_auto_detected(fake_join):
    assert distributed.initialize_distributed(_config(initialize=True)) is True
    assert fake_join.calls == [{}]  # Cloud TPU, SLURM, ...: JAX reads everything from the environment
    distributed.initialize_distributed(_config(
        initialize=True, coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3, local_device_ids=[1]))
    assert fake_join.calls[1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                                  "local_device_ids": [1]}


def test_cpu_collectives_are_chosen_when_unset(fake_join):
    option = distributed.CPU_COLLECTIVES_OPTION
    previous = getattr(jax.config, option)
    try:
        jax.config.update(option, None)
        distributed.initialize_distributed(_config(initialize=True))
        assert getattr(jax.config, option) == "gloo"
        jax.config.update(option, "mpi")  # a choice made by the user stays
        distributed.initialize_distributed(_config(initialize=True))
        assert getattr(jax.config, option) == "mpi"
    finally:
        jax.config.update(option, previous)


def test_jax_failing_to_detect_a_cluster_names_the_keys(monkeypatch):
    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    monkeypatch.setattr(distributed.xla_bridge, "backends_are_initialized", lambda: False)
    with pytest.raises(ValueError, match=r"coordinator_address should be defined.*set config\.distributed\."
                                         r"coordinator_address = 'host:port'"):
        distributed.initialize_distributed(_config(initialize=True))
