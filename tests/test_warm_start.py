"""config.init_from (warm start of trainable parts) and config.frozen_from (frozen parts trained in another
run), with the tiny regression method: values copied by path, and each misuse a clear error."""
import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from editdiff.train import mesh as mesh_lib
from editdiff.train.build import build_run_state, create_checkpointer
from editdiff.train.config import frozen_from_entry
from editdiff.train.loop import train_and_evaluate
from editdiff.train.optimizer import create_optimizer
from tiny_method import TinyRegression, tiny_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("source"))
    config = tiny_config()
    config.train.num_steps = 4
    train_and_evaluate(config, workdir, method=TinyRegression(config))
    return workdir


def fresh_run_state(config, workdir):
    """The run state a fresh training run in `workdir` starts from."""
    method = TinyRegression(config)
    checkpointer = create_checkpointer(config, str(workdir))
    try:
        return build_run_state(config, method, mesh_lib.create_mesh(config.mesh), create_optimizer(config.train),
                               checkpointer, str(workdir))
    finally:
        checkpointer.close()


def flat(state):
    return {".".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


def source_ema(workdir):
    config = tiny_config()
    config.train.num_steps = 4
    return flat(fresh_run_state(config, workdir).state.ema_params)  # restores the source run's step 4


def test_init_from_copies_the_selected_trainable_parameters(source_run, tmp_path):
    config = tiny_config()
    config.init_from.workdir = source_run
    config.init_from.include = r"^head\.layers\.0\."
    run = fresh_run_state(config, tmp_path)
    assert int(run.state.step) == 0
    params, ema, initial, source = (flat(run.state.params), flat(run.state.ema_params),
                                    flat(fresh_run_state(tiny_config(), tmp_path / "plain").state.params),
                                    source_ema(source_run))
    for path in params:
        expected = source[path] if path.startswith("head.layers.0.") else initial[path]
        np.testing.assert_array_equal(params[path], expected, err_msg=path)
        np.testing.assert_array_equal(ema[path], expected, err_msg=path)
    assert not np.array_equal(source["head.layers.0.kernel"], initial["head.layers.0.kernel"])


def test_init_from_brings_the_batchnorm_statistics_of_the_selected_layers(source_run, tmp_path):
    config = tiny_config()
    config.init_from.workdir = source_run
    config.init_from.include = r"^head\."
    started = flat(nnx.state(fresh_run_state(config, tmp_path).state.model_state, nnx.BatchStat))
    plain = flat(nnx.state(fresh_run_state(tiny_config(), tmp_path / "plain").state.model_state, nnx.BatchStat))
    config = tiny_config()
    config.train.num_steps = 4
    source = flat(nnx.state(fresh_run_state(config, source_run).state.model_state, nnx.BatchStat))
    assert started and set(started) == set(source)
    for path in started:
        np.testing.assert_array_equal(started[path], source[path], err_msg=path)
    assert any(not np.array_equal(plain[p], source[p]) for p in source)  # the source's statistics moved


def test_init_from_refuses_another_method_a_missing_workdir_and_other_shapes(source_run, tmp_path):
    config = tiny_config()
    config.init_from.workdir = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"config\.init_from\.workdir = .*nothing.* allowed: the workdir of a"):
        fresh_run_state(config, tmp_path / "a")

    other = tmp_path / "other_method"
    shutil.copytree(source_run, other)
    saved = json.load(open(other / "config.json"))
    json.dump({**saved, "method": "multitask"}, open(other / "config.json", "w"))
    config.init_from.workdir = str(other)
    with pytest.raises(ValueError, match=r"is a 'multitask' run; allowed: a 'tiny_method' run"):
        fresh_run_state(config, tmp_path / "b")

    config.init_from.workdir = source_run
    config.model.hidden = 24
    with pytest.raises(ValueError, match=r"config\.init_from: shapes differ: .*head\.layers\.0\.kernel: stored "
                                         r"\(16, 32\), this model \(16, 24\)"):
        fresh_run_state(config, tmp_path / "c")

    config.model.hidden = 32
    config.init_from.include = "no_such_path"
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        fresh_run_state(config, tmp_path / "d")


def test_frozen_from_loads_another_runs_subtree_as_a_frozen_part(source_run, tmp_path):
    config = tiny_config()
    config.model.teacher = True
    config.frozen_from.teacher = frozen_from_entry(source_run, source="head", target="teacher")
    run = fresh_run_state(config, tmp_path)
    frozen, source = flat(run.frozen), source_ema(source_run)
    teacher = {path: value for path, value in frozen.items() if path.startswith("teacher.")}
    assert teacher and all(np.array_equal(value, source["head." + path[len("teacher."):]])
                           for path, value in teacher.items())
    assert not any(path.startswith("teacher.") for path in flat(run.state.params))  # frozen, not trained

    config.frozen_from.teacher.source = "head.layers.0"
    with pytest.raises(ValueError, match=r"config\.frozen_from\.teacher: the subtree head\.layers\.0 of .* does "
                                         r"not fit the frozen subtree teacher"):
        fresh_run_state(config, tmp_path / "mismatch")
    assert not os.path.exists(tmp_path / "mismatch" / "checkpoints" / "0")
