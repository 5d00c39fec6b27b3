"""The trainer's parts in isolation: config validation, schedule, accumulation + EMA, mesh layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.methods.base import Method
from editdiff.train import mesh as mesh_lib
from editdiff.train.config import default_train_config, validate_config
from editdiff.train.optimizer import create_optimizer, learning_rate_schedule
from editdiff.train.state import init_train_state, split_model
from editdiff.train.step import make_train_step


def validate_train_config(config):
    validate_config(config, Affine)


def test_default_config_is_valid():
    validate_train_config(default_train_config())


def test_validation_lists_every_problem_in_one_error():
    config = default_train_config()
    config.train.ema_decay = 1.0
    config.compute_dtype = "float16"
    config.mesh.data = -1
    config.mesh.fsdp = -1
    with pytest.raises(ValueError) as error:
        validate_train_config(config)
    message = str(error.value)
    assert "config.train.ema_decay = 1.0 is invalid; allowed: a number in [0, 1)" in message
    assert "config.compute_dtype = 'float16' is invalid; allowed: one of 'float32', 'bfloat16'" in message
    config.train.ema_decay, config.compute_dtype = 0.9, "bfloat16"
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        validate_train_config(config)
    config.mesh.fsdp = 2
    config.train.grad_accum_steps = 3
    with pytest.raises(ValueError, match=r"num_steps = 1000 is invalid; allowed: a multiple of .*accum_steps = 3"):
        validate_train_config(config)
    del config.train["log_every"]
    with pytest.raises(ValueError, match=r"config\.train\.log_every is missing"):
        validate_train_config(config)


def test_schedule_warms_up_then_holds_or_decays():
    config = default_train_config().train
    config.learning_rate, config.warmup_steps, config.num_steps = 1.0, 4, 12
    constant = learning_rate_schedule(config)
    np.testing.assert_allclose([constant(c) for c in (0, 1, 3, 4, 11)], [0.25, 0.5, 1.0, 1.0, 1.0])
    config.schedule = "cosine"
    cosine = learning_rate_schedule(config)
    np.testing.assert_allclose([cosine(c) for c in (0, 3, 4, 8, 12)], [0.25, 1.0, 1.0, 0.5, 0.0], atol=1e-6)
    config.grad_accum_steps = 2  # the schedule counts updates: 2 warm-up updates of 6
    np.testing.assert_allclose([learning_rate_schedule(config)(c) for c in (0, 1, 4)], [0.5, 1.0, 0.5], atol=1e-6)
    config.grad_accum_steps, config.schedule, config.decay_every, config.decay_rate = 1, "exponential", 3, 0.9
    staircase = learning_rate_schedule(config)  # x0.9 every 3 updates after the 4 warm-up updates
    np.testing.assert_allclose([staircase(c) for c in (0, 3, 4, 6, 7, 10, 13)],
                               [0.25, 1.0, 1.0, 1.0, 0.9, 0.81, 0.729], rtol=1e-6)


class Affine(Method):
    """y = a * x + b with a frozen scale: the smallest model with a trainable and a frozen part."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.weight = nnx.Param(jnp.ones((4,)))
            self.frozen_scale = nnx.Param(jnp.full((4,), 2.0))

        def __call__(self, x):
            return self.frozen_scale[...] * self.weight[...] * x

    def init_model(self, rngs):
        return self.Model(rngs)

    @property
    def trainable(self):
        return nnx.PathContains("weight")

    def loss(self, model, batch, rng):
        return jnp.mean(jnp.square(model(batch["x"]) - 1.0)), {}

    def sample(self, model, batch, rng):
        return model(batch["x"])

    def train_batches(self, *, start_step, process_index, process_count):
        while True:
            yield {"x": np.ones((2, 4), np.float32)}


def test_accumulation_updates_params_and_ema_every_k_micro_steps():
    config = default_train_config()
    config.train.grad_accum_steps, config.train.num_steps, config.train.warmup_steps = 2, 4, 0
    method = Affine(config)
    graphdef, params, model_state, frozen = split_model(method.init_model(nnx.Rngs(0)), method.trainable)
    assert [path for path, _ in nnx.to_flat_state(frozen)] == [("frozen_scale",)]
    optimizer = create_optimizer(config.train)
    step = jax.jit(make_train_step(method, graphdef, optimizer, seed=0, ema_decay=0.5))
    state = init_train_state(params, model_state, optimizer)
    batch = {"x": jnp.ones((2, 4))}
    initial = np.asarray(state.params["weight"][...])

    state, metrics = step(state, frozen, batch)
    assert int(state.step) == 1 and metrics["grad_norm"] > 0
    np.testing.assert_array_equal(state.params["weight"][...], initial)
    np.testing.assert_array_equal(state.ema_params["weight"][...], initial)

    state, _ = step(state, frozen, batch)
    updated = np.asarray(state.params["weight"][...])
    assert not np.allclose(updated, initial)
    np.testing.assert_allclose(state.ema_params["weight"][...], 0.5 * initial + 0.5 * updated, rtol=1e-6)


@pytest.fixture(scope="module")
def mesh_4x2():
    config = default_train_config().mesh
    config.data, config.fsdp = 4, -1
    return mesh_lib.create_mesh(config)


def test_mesh_fills_the_minus_one_axis(mesh_4x2):
    assert dict(mesh_4x2.shape) == {"data": 4, "fsdp": 2}


def test_state_arrays_shard_their_largest_divisible_axis_when_large(mesh_4x2):
    spec = lambda shape: mesh_lib.array_sharding(mesh_4x2, shape, fsdp_min_size=64).spec  # noqa: E731
    assert spec((8, 3, 16)) == jax.sharding.PartitionSpec(None, None, "fsdp")
    assert spec((3, 3, 9)) == jax.sharding.PartitionSpec()  # nothing divisible by 2
    assert spec((4, 4)) == jax.sharding.PartitionSpec()  # too small to be worth it
    assert spec(()) == jax.sharding.PartitionSpec()


def test_global_batch_splits_over_every_device(mesh_4x2):
    batch = mesh_lib.global_batch(mesh_4x2, {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)})
    assert batch["x"].shape == (16, 3)
    assert {shard.data.shape for shard in batch["x"].addressable_shards} == {(2, 3)}
    with pytest.raises(ValueError, match=r"global batch size 12 does not split over the 8 devices"):
        mesh_lib.global_batch(mesh_4x2, {"x": np.zeros((12, 3), np.float32)})


def test_split_model_rejects_low_precision_or_empty_trainable_parameters():
    method = Affine(default_train_config())
    model = method.init_model(nnx.Rngs(0))
    with pytest.raises(ValueError, match="selects no parameters"):
        split_model(model, nnx.PathContains("missing"))
    model.weight = nnx.Param(jnp.ones((4,), jnp.bfloat16))
    with pytest.raises(ValueError, match="must be float32; these are not: weight: bfloat16"):
        split_model(model, method.trainable)


def test_weight_decay_shrinks_matrices_but_not_vectors():
    config = default_train_config().train
    config.weight_decay, config.warmup_steps, config.learning_rate = 0.5, 0, 0.1
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    optimizer = create_optimizer(config)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)))
    np.testing.assert_array_equal(updates["bias"], np.zeros(2))


def test_initial_model_is_the_fresh_runs_model_with_rng_state_as_eager_code_makes_it():
    from editdiff.train.build import initial_model
    from tiny_method import TinyRegression, tiny_config

    method = TinyRegression(tiny_config())
    model, eager = initial_model(method, seed=3), method.init_model(nnx.Rngs(3))
    leaves = jax.tree.leaves(nnx.state(model))
    assert any(jnp.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves)  # Dropout's RNG stream
    assert not any(x.committed for x in leaves)  # as eager arrays: no second compile of a first jitted call
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
                 nnx.state(model, nnx.Param), nnx.state(eager, nnx.Param))
