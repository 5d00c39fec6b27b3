"""A tiny regression method for the trainer's tests: a frozen random projection (standing in for a
pretrained VAE) under a trainable head with BatchNorm and Dropout (non-parameter state: running statistics
and an RNG counter, which the step carries and checkpoints hold), its own synthetic data, and an evaluator."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from editdiff.config_checks import BOOLEAN, Section, int_at_least
from editdiff.methods.base import Evaluator, Method
from editdiff.methods.reports import ModelFunction, write_scores
from editdiff.train.config import default_train_config, eval_entry

FEATURES = 8
NUM_STEPS = 6


def _head(hidden: int, rngs: nnx.Rngs) -> nnx.Sequential:
    """Linear, BatchNorm (running statistics), GELU, Dropout (an RNG counter), Linear. No bias before the
    BatchNorm: its gradient would be rounding noise that Adam scales up to learning-rate-sized steps, and runs
    that sum in another order (several processes, several devices) would drift apart in it."""
    return nnx.Sequential(nnx.Linear(16, hidden, use_bias=False, rngs=rngs),
                          nnx.BatchNorm(hidden, momentum=0.5, rngs=rngs),
                          nnx.gelu, nnx.Dropout(0.1, rngs=rngs), nnx.Linear(hidden, 2, rngs=rngs))


class TinyRegressor(nnx.Module):
    """head(frozen_encoder(x)); with `teacher`, a frozen second head of the same shape (for frozen_from)."""

    def __init__(self, hidden: int, teacher: bool, rngs: nnx.Rngs):
        self.frozen_encoder = nnx.Linear(FEATURES, 16, rngs=rngs)
        self.head = _head(hidden, rngs)
        self.teacher = _head(hidden, rngs) if teacher else None

    def __call__(self, x):
        return self.head(self.frozen_encoder(x))


def synthetic_batches(data_config, *, start_step, process_index, process_count):
    """Global batch k is a pure function of (seed, k), of which process p reads rows [p B/P, (p+1) B/P): any
    process count trains on the same global batches. `nan_at_batch` poisons one batch."""
    target = np.random.default_rng(data_config.seed).normal(size=(FEATURES, 2)).astype(np.float32)
    local_size = data_config.batch_size // process_count
    rows = slice(process_index * local_size, (process_index + 1) * local_size)
    step = start_step
    while True:
        x = np.random.default_rng([data_config.seed, step]).normal(size=(data_config.batch_size, FEATURES))
        x = x.astype(np.float32)[rows]
        y = x @ target
        if step == data_config.nan_at_batch:
            x[0, 0] = np.nan
        yield {"x": x, "y": y}
        step += 1


class HeldOutError(Evaluator):
    """Mean squared error of the model and of a predict-zero arm on a fixed batch; counts its traces."""

    def __init__(self, name, every, data_config):
        super().__init__(name, every)
        self.batch = next(synthetic_batches(data_config, start_step=10_000, process_index=0, process_count=1))
        self.predict = ModelFunction(lambda model, x: model(x))

    def __call__(self, model, step, workdir, writer):
        prediction = np.asarray(self.predict(model, self.batch["x"]))
        scores = {"held_out": {"model": {"MSE": float(np.mean((prediction - self.batch["y"]) ** 2))},
                               "zero": {"MSE": float(np.mean(self.batch["y"] ** 2))}}}
        write_scores(workdir, step, scores, higher_is_better={"MSE": False}, writer=writer)
        return scores


class TinyRegression(Method):
    """Regresses y = x @ W from noisy x; the noise comes from the step's key, so resume must reproduce it.
    The metric `batch_checksum` sums this step's global batch."""

    evaluator_kinds = ("held_out_error",)

    @classmethod
    def config_sections(cls, config):
        return [Section("data", {"seed": int_at_least(0), "batch_size": int_at_least(1),
                                 "nan_at_batch": ((lambda v: isinstance(v, int)), "an integer")}),
                Section("model", {"hidden": int_at_least(1), "teacher": BOOLEAN})]

    def init_model(self, rngs):
        return TinyRegressor(self.config.model.hidden, self.config.model.teacher, rngs)

    @property
    def trainable(self):
        return nnx.PathContains("head")

    def train_batches(self, *, start_step, process_index, process_count):
        return synthetic_batches(self.config.data, start_step=start_step, process_index=process_index,
                                 process_count=process_count)

    def loss(self, model, batch, rng):
        x = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)
        loss = jnp.mean(jnp.square(model(x) - batch["y"]))
        return loss, {"batch_checksum": jnp.sum(batch["x"])}

    def sample(self, model, batch, rng):
        return model(batch["x"])

    def evaluators(self):
        return [HeldOutError(name, entry.every, self.config.data) for name, entry in self.config.evals.items()]

    def export(self, model, directory):
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "head.json")
        with open(path, "w") as f:
            json.dump(jax.tree.map(lambda v: np.asarray(v).tolist(), nnx.to_pure_dict(nnx.state(model.head, nnx.Param))), f)
        return [path]


METHOD = TinyRegression


def tiny_config(**mesh) -> ml_collections.ConfigDict:
    config = default_train_config()
    config.method = "tiny_method"  # this module (tests/ is on sys.path)
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
    config.model = ml_collections.ConfigDict({"hidden": 32, "teacher": False})
    config.evals.held_out = eval_entry("held_out_error")
    return config
