"""The rectifier method (configs/rectifier.py:tiny) on a tiny ldm export (that R starts exactly at the frozen
model is tests/test_rectifier_head.py's): overfitting a batch moves only R and beats the frozen U-Net, a run writes the reconstruction table (sets
reconstruction_N, arms frozen and rectified) and grid, bad bases are clear errors before anything is built."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.ldm import get_config as ldm_config
from configs.rectifier import get_config
from editdiff.methods.rectifier import RectifierMethod
from editdiff.methods.ldm import LDMMethod
from editdiff.train.config import validate_config
from editdiff.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The export of a randomly initialised tiny ldm model (what `--mode=export` writes): the frozen base."""
    method = LDMMethod(ldm_config("tiny"))
    directory = str(tmp_path_factory.mktemp("ldm_base") / "export")
    method.export(nnx.jit(lambda: method.init_model(nnx.Rngs(0)))(), directory)
    return directory


def tiny(base_dir: str):
    config = get_config("tiny")
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.pretrained.root = base_dir
    return config


def _built(config):
    """The model as the trainer builds it: init_model, then the method's pretrained values."""
    method = RectifierMethod(config)
    model = method.init_model(nnx.Rngs(0))
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, value in method.pretrained_state().items():
        variables[path].set_value(jnp.asarray(value))
    return method, model


def test_overfitting_a_batch_moves_only_r_and_beats_the_frozen_unet(base):
    method, model = _built(tiny(base))
    batch = {k: jnp.asarray(v) for k, v in next(method.train_batches(start_step=0, process_index=0,
                                                                     process_count=1)).items()}
    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    unet_before = jax.tree.map(np.asarray, nnx.state(model.unet, nnx.Param))
    optimizer = optax.adam(2e-3)
    key = jax.random.key(0)  # fixed timesteps and noise: the batch can be memorised

    def loss_of(p, rest):
        merged = nnx.merge(graphdef, p, rest, copy=True)
        return method.loss(merged, batch, key)[0], nnx.state(merged, nnx.BatchStat)

    @jax.jit
    def step(params, rest, opt_state):
        (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(30):
        params, opt_state, loss = step(params, rest, opt_state)
        losses.append(float(loss))
    print(f"rectifier overfitting one batch: loss {losses[0]:.4f} (the frozen U-Net's) -> {losses[-1]:.4f}")
    assert losses[-1] < 0.85 * losses[0]  # mid block only (the tiny preset): 1.36 -> 1.01 measured
    trained = nnx.merge(graphdef, params, rest, copy=True)
    jax.tree.map(np.testing.assert_array_equal, unet_before,
                 jax.tree.map(np.asarray, nnx.state(trained.unet, nnx.Param)))


def test_a_run_writes_the_reconstruction_table_and_grid(base, tmp_path):
    config = tiny(base)
    config.evals.reconstruction.update(num_steps=(1,), num_images=1, batch_size=1, grid_images=1)
    train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "eval" / "step_0000002.json") as f:
        written = json.load(f)
    scores = written["scores"]
    assert set(scores) == {"reconstruction_1"} and set(scores["reconstruction_1"]) == {"frozen", "rectified"}
    for values in scores["reconstruction_1"].values():
        assert set(values) == {"L1", "L2", "SSIM", "posterior_gap"}
        assert all(np.isfinite(v) for v in values.values())
    table = (tmp_path / "eval" / "step_0000002.md").read_text()
    assert "| rectified |" in table and "| frozen |" in table
    assert (tmp_path / "reconstruction" / "step_0000002.png").is_file()


def test_a_base_that_is_no_ldm_export_or_of_another_schedule_is_a_clear_error(base, tmp_path):
    config = tiny(str(tmp_path))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config.pretrained.root: .*no ldm.json; config.pretrained.root must be"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.diffusion.prediction_type = "v_prediction"
    with pytest.raises(ValueError, match=r"config.diffusion.prediction_type = 'v_prediction' is invalid; allowed: "
                                         r"the base's 'epsilon'"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.model.rectifier.stem_stride = 3
    with pytest.raises(ValueError, match=r"config.model.rectifier: RectifierConfig: stem_stride=3 must be 1 or 2"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.evals.reconstruction.num_steps = ()
    with pytest.raises(ValueError, match=r"config.evals.reconstruction.num_steps = \(\) is invalid"):
        validate_config(config, RectifierMethod)
