"""pix2pix in the multitask harness: the PatchGAN's 70x70 window, the generator's shapes, the one-loss
simultaneous G/D update, overfitting one batch with the trainer's step, and the tiny preset end to end."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.pix2pix import get_config
from editdiff.methods.pix2pix import IN_CHANNELS, Pix2PixMethod
from editdiff.nn.pix2pix import PatchDiscriminator, UNetGenerator, patch_output_size, patch_receptive_field
from editdiff.train import modes
from editdiff.train.optimizer import create_optimizer
from editdiff.train.state import init_train_state, split_model
from editdiff.train.step import make_train_step


def tiny(**model):
    config = get_config("tiny")
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.model.update(model)
    return config


@pytest.fixture(scope="module")
def tiny_model() -> nnx.Module:
    """The tiny preset's model, randomly initialised (built once: eager initialisation takes seconds)."""
    return Pix2PixMethod(tiny()).init_model(nnx.Rngs(0))


def random_batch(batch_size: int = 2, size: int = 16, seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 5)
    image = lambda k: jax.random.uniform(k, (batch_size, size, size, 3), minval=-1.0, maxval=1.0)  # noqa: E731
    return {"source": image(keys[0]), "target": image(keys[1]), "reference": image(keys[2]),
            "mask": jax.random.bernoulli(keys[3], 0.8, (batch_size, size, size, 1)).astype(jnp.float32),
            "edit_vector": jax.random.uniform(keys[4], (batch_size, 9)),
            "task_labels": jnp.zeros((batch_size, 5))}


@pytest.mark.parametrize("num_layers, size, window", [(3, 256, 70), (2, 64, 34)])
def test_patchgan_logit_sees_exactly_its_receptive_field(num_layers, size, window):
    """The gradient of one interior logit w.r.t. the input is non-zero on exactly a window x window square
    (BatchNorm in eval mode: a per-channel affine map, so nothing couples distant pixels)."""
    assert patch_receptive_field(num_layers) == window
    d = PatchDiscriminator(2, ndf=4, num_layers=num_layers, norm="batch", rngs=nnx.Rngs(0))
    d.eval()
    out = patch_output_size(size, num_layers)
    half = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    assert jax.eval_shape(d, half, half).shape == (1, out, out, 1)
    i = out // 2
    inputs = jax.random.normal(jax.random.key(1), (1, size, size, 2))
    grad = jax.jit(jax.grad(lambda v: d(v[..., :1], v[..., 1:])[0, i, i, 0]))(inputs)
    rows, cols = np.nonzero(np.abs(np.asarray(grad[0])).sum(-1))
    assert rows.max() - rows.min() + 1 == window and cols.max() - cols.min() + 1 == window
    assert len(rows) == window * window


@pytest.mark.parametrize("size, num_downs", [(16, 4), (64, 6)])
def test_generator_maps_the_input_to_an_image_in_range(size, num_downs):
    """G(x) keeps the input's size, lies in [-1, 1], and drops units only when given a dropout key."""
    g = UNetGenerator(IN_CHANNELS, 3, num_downs=num_downs, ngf=8, dropout_rate=0.5, rngs=nnx.Rngs(0))
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, size, size, IN_CHANNELS))
    y, dropped = nnx.jit(lambda g, x: (g(x), g(x, dropout_key=jax.random.key(1))))(g, x)
    assert y.shape == (2, size, size, 3) and y.dtype == jnp.float32
    assert float(jnp.abs(y).max()) <= 1.0 and float(jnp.std(y)) > 0.0
    assert float(jnp.abs(dropped - y).max()) > 0.0


def test_one_loss_gives_g_its_loss_and_d_its_loss(tiny_model):
    """Only G and D train; the summed loss's gradient is L_G's for G and L_D's for D, non-zero for every
    parameter."""
    method, model = Pix2PixMethod(tiny()), tiny_model
    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    assert {path[0] for path, _ in nnx.to_flat_state(params)} == {"generator", "discriminator"}
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    batch, key = random_batch(), jax.random.key(0)

    def terms(p):  # [L_D, L_G]
        t = method.loss_terms(nnx.merge(graphdef, p, rest), batch, key)
        return jnp.stack([t["d"], t["g_gan"] + 100.0 * t["g_l1"]])

    def largest_gradients(p):  # per parameter: max |d L_D / d p|, max |d L_G / d p|
        return jax.tree.map(lambda g: jnp.max(jnp.abs(g.reshape(2, -1)), axis=1), jax.jacrev(terms)(p))

    # The loss is linear in its terms, so the total's gradient is L_G's for G and L_D's for D exactly when L_D
    # gives G none and L_G gives D none; every parameter gets one from its own network's loss (no dead bias).
    largest = jax.device_get(nnx.to_pure_dict(jax.jit(largest_gradients)(params)))
    for net, own in (("discriminator", 0), ("generator", 1)):
        for g in jax.tree.leaves(largest[net]):
            assert g[1 - own] == 0.0 and g[own] > 0.0


def test_trains_a_few_steps_and_its_l1_falls():
    """The trainer's own step (one Adam over G and D) overfits one batch whose target is a pixelwise function of
    the input; with norm = "batch" the BatchNorm statistics it carries move. ngf = 16: the U-Net's finest skip
    is at half resolution, where the tiny preset's 8 channels hold fewer numbers than the 16 x 16 x 3 target."""
    config = tiny(norm="batch", ngf=16)
    config.train.learning_rate = 3e-3
    method = Pix2PixMethod(config)
    optimizer = create_optimizer(config.train)
    graphdef, params, model_state, frozen = split_model(method.init_model(nnx.Rngs(0)), method.trainable)
    state = init_train_state(params, model_state, optimizer)
    step = jax.jit(make_train_step(method, graphdef, optimizer, seed=0, ema_decay=0.0))
    batch = random_batch(batch_size=2)
    batch["target"] = 0.5 * batch["source"] + 0.5 * batch["reference"][..., ::-1]
    l1 = []
    for _ in range(40):
        state, metrics = step(state, frozen, batch)
        l1.append(float(metrics["loss_g_l1"]))
        assert set(metrics) == {"loss", "grad_norm", "loss_g_gan", "loss_g_l1", "loss_d"}
        assert all(np.isfinite(float(v)) for v in metrics.values())
    print(f"pix2pix L1 over 40 steps: {l1[0]:.3f} -> {l1[-1]:.3f}")
    assert l1[-1] < 0.5 * l1[0]
    means = [v for path, v in nnx.to_flat_state(state.model_state) if path[-1] == "mean"]
    assert means and max(float(jnp.abs(v[...]).max()) for v in means) > 0.0


def test_tiny_preset_trains_and_writes_the_multitask_tables(tmp_path):
    workdir = str(tmp_path)
    outcome = modes.train(tiny(), workdir)
    assert outcome.step == 2 and not outcome.preempted
    assert os.path.isfile(os.path.join(workdir, "samples", "step_0000002.png"))
    with open(os.path.join(workdir, "eval", "step_0000002.json")) as f:
        scores = json.load(f)["scores"]
    assert set(scores) == {"blur", "grain", "colour", "inpaint", "sharpen",
                           "blur+grain", "blur+grain+colour", "grain+colour", "grain+colour+sharpen"}
    for by_arm in scores.values():
        assert set(by_arm) == {"model", "do-nothing"}
        assert all(np.isfinite(v) for values in by_arm.values() for v in values.values())


def test_export_writes_the_generator_and_its_input_layout(tmp_path, tiny_model):
    from safetensors.numpy import load_file

    model = tiny_model
    weights, described = Pix2PixMethod(tiny()).export(model, str(tmp_path))
    exported = load_file(weights)
    np.testing.assert_array_equal(exported["down.0.kernel"], model.generator.down[0].kernel[...])
    assert not any(name.startswith("discriminator") for name in exported)
    with open(described) as f:
        assert sum(json.load(f)["input"]["channels"].values()) == IN_CHANNELS == 16


def test_edit_mode_edits_a_photo_at_its_own_resolution(tiny_model):
    """As the multitask method's --mode=edit: a 20 x 24 photo (reflect-padded to the 16 px tiles) comes back
    20 x 24."""
    config = tiny()
    config.edit.blur = 0.5
    method = Pix2PixMethod(config)
    model = nnx.clone(tiny_model)
    model.eval()
    photo = np.asarray(jax.random.uniform(jax.random.key(0), (20, 24, 3), minval=-1.0, maxval=1.0))
    results = method.edit(model, photo)
    assert results["edited"].shape == (20, 24, 3) and np.abs(results["edited"]).max() <= 1.0


@pytest.mark.parametrize("key, value, message", [
    ("model.gan_loss", "hinge", "config.model.gan_loss = 'hinge' is invalid; allowed: one of 'vanilla', 'lsgan'"),
    ("model.discriminator_layers", 3, "config.model.discriminator_layers = 3 is invalid for config.data.crop_size"),
    ("model.num_downs", 5, "config.model.num_downs = 5 is invalid for config.data.crop_size = 16"),
    ("model.unet", {}, "config.model.unet is not a known key"),
    ("edit.blur", 2.0, "config.edit.blur = 2.0 is invalid; allowed: a number in [0, 1]"),
])
def test_invalid_config_is_one_clear_error(tmp_path, key, value, message):
    config = tiny()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        modes.train(config, str(tmp_path))
    with pytest.raises(ValueError, match="unknown preset 'sd21'; allowed: demo, sd15, tiny"):
        get_config("sd21")
