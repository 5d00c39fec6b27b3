"""The rectifier's PyTorch export (editdiff/interop/rectifier.py): the directory `RectifierMethod.export` writes
loads as diffusers' U-Net + the torch R, which reproduce the JAX rectified prediction (with non-zero offsets
and BatchNorm running statistics), and `modulated` rejects offsets that fit no conv."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs.ldm import get_config as ldm_config
from configs.rectifier import get_config
from editdiff.interop.rectifier import load_torch_rectifier, modulated
from editdiff.methods.ldm import LDMMethod, load_null_context
from editdiff.methods.rectifier import RectifierMethod
from editdiff.tracing import abstract_module
from editdiff.train.build import initial_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The export of a tiny ldm model with random weights (what `--mode=export` writes): the frozen base."""
    method = LDMMethod(ldm_config("tiny"))
    model = abstract_module(lambda: method.init_model(nnx.Rngs(0)))  # no init program to compile
    _randomize(model, seed=1)
    directory = str(tmp_path_factory.mktemp("ldm_base") / "export")
    with pytest.MonkeyPatch.context() as patch:  # its diffusers check is test_ldm's (15 s of eager JAX)
        patch.setattr(LDMMethod, "exported_unet_error", lambda *args: None)
        method.export(model, directory)
    return directory


def _randomize(module: nnx.Module, seed: int) -> None:
    """Fills every variable of `module` (abstract or not) with numpy-drawn values: kernels N(0, 1 / fan_in),
    norm scales 1 + 0.2 N(0, 1), BatchNorm running variances U(0.5, 1.5), everything else 0.1 N(0, 1) (biases,
    R's head_b among them: zero at initialisation, it would make every offset a b^T zero; running means), so
    that the export check cannot pass by ignoring any of them."""
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable):
            shape = node.get_value().shape
            noise = rng.standard_normal(shape)
            value = {"kernel": noise / np.sqrt(np.prod(shape[:-1])), "scale": 1.0 + 0.2 * noise,
                     "var": rng.uniform(0.5, 1.5, shape)}.get(path[-1], 0.1 * noise)
            node.set_value(jnp.asarray(value, jnp.float32))


@pytest.fixture(scope="module")
def exported(base, tmp_path_factory):
    """(method, model in eval mode, export directory, paths written) for R over the mid and up blocks' convs
    (the upsampler's among them): the base's U-Net and null context as the trainer loads them
    (pretrained_state), R random."""
    config = get_config("tiny")
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.pretrained.root = base
    config.model.modulate = ("mid_block", "up_blocks")
    method = RectifierMethod(config)
    model = initial_model(method)
    _randomize(model.rectifier, seed=0)
    model.eval()
    directory = str(tmp_path_factory.mktemp("rectifier") / "export")
    return method, model, directory, method.export(model, directory)


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def test_export_reproduces_the_jax_rectified_prediction_in_pytorch(exported):
    from diffusers import DDIMScheduler
    from diffusers import UNet2DConditionModel as TorchUNet

    method, model, directory, written = exported
    assert {os.path.relpath(p, directory) for p in written} == {
        "unet", os.path.join("null_context", "null_context.safetensors"),
        os.path.join("scheduler", "scheduler_config.json"), "rectifier", "rectifier.json"}
    with open(os.path.join(directory, "rectifier.json")) as f:
        summary = json.load(f)
    print(f"export self-check (rectifier.json): max abs error {summary['torch_max_abs_error']:.2e}")
    assert summary["method"] == "rectifier" and summary["modulate"] == ["mid_block", "up_blocks"]
    assert summary["autoencoder"] == method.base["autoencoder"] and summary["torch_max_abs_error"] < 1e-4
    with open(os.path.join(directory, "rectifier", "config.json")) as f:
        layers = json.load(f)["layers"]
    assert layers[0]["name"] == "mid_block.resnets.0.conv1" and "up_blocks.0.upsamplers.0.conv" in {
        layer["name"] for layer in layers} and len(layers) == len(model.rectifier.layers)

    # Independently of the export's own check: other inputs, the torch path spelled out here.
    size = method.config.data.crop_size // model.autoencoder.downsample_factor
    channels = method.unet_config.in_channels
    z_t, z_0 = (jax.random.normal(jax.random.key(seed), (2, size, size, channels)) for seed in (3, 4))
    t = jnp.array([50, 700], jnp.int32)
    expected = np.asarray(nnx.jit(lambda m, *args: m.rectified_prediction(method.schedule, *args))(model, z_t, t, z_0))

    unet = TorchUNet.from_pretrained(os.path.join(directory, "unet")).eval()
    rectifier = load_torch_rectifier(os.path.join(directory, "rectifier"))
    scheduler = DDIMScheduler.from_pretrained(os.path.join(directory, "scheduler"))
    assert scheduler.config.prediction_type == "epsilon"  # the estimate below is epsilon's
    context = torch.from_numpy(load_null_context(directory)).repeat(2, 1, 1)
    z_t, z_0, t = _nchw(z_t), _nchw(z_0), torch.from_numpy(np.array(t)).long()
    with torch.no_grad():
        frozen = unet(z_t, t, context).sample
        alpha_bar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        estimate = (z_t - (1 - alpha_bar).sqrt() * frozen) / alpha_bar.sqrt()
        with modulated(unet, rectifier(z_0, estimate, t)):
            rectified = unet(z_t, t, context).sample
        again = unet(z_t, t, context).sample  # the convs are plain again after the block
    rectified, frozen = rectified.permute(0, 2, 3, 1).numpy(), frozen.permute(0, 2, 3, 1).numpy()
    error, change = np.abs(rectified - expected).max(), np.abs(rectified - frozen).max()
    print(f"torch R + modulated diffusers U-Net vs JAX rectified prediction: max abs error {error:.2e} "
          f"(the modulation changes the prediction by up to {change:.2e})")
    assert error < 1e-4 and change > 1e-3
    np.testing.assert_array_equal(again.permute(0, 2, 3, 1).numpy(), frozen)


def test_modulated_rejects_unknown_convs_and_offsets_of_other_shapes(exported):
    from diffusers import UNet2DConditionModel as TorchUNet

    directory = exported[2]
    unet = TorchUNet.from_pretrained(os.path.join(directory, "unet")).eval()
    cout, cin, kh, kw = unet.mid_block.resnets[0].conv1.weight.shape
    a, b = torch.zeros(2, kh, kw, cin), torch.zeros(2, kh, kw, cout)
    with pytest.raises(ValueError, match=r"'mid_block.resnets.0.conv9' is no Conv2d of the U-Net"):
        with modulated(unet, {"mid_block.resnets.0.conv9": (a, b)}):
            pass
    wrong = torch.zeros(2, kh, kw, cin + 1)
    with pytest.raises(ValueError, match=re.escape(
            f"'mid_block.resnets.0.conv1': offsets of shapes [(2, {kh}, {kw}, {cin + 1}), (2, {kh}, {kw}, {cout})], "
            f"expected a (B, {kh}, {kw}, {cin}) and b (B, {kh}, {kw}, {cout})")):
        with modulated(unet, {"mid_block.resnets.0.conv1": (wrong, b)}):
            pass
    with pytest.raises(ValueError, match=r"offsets for batch 2, the conv's input has batch 1"):
        with modulated(unet, {"mid_block.resnets.0.conv1": (a, b)}), torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, 8, 8), torch.tensor([1]),
                 torch.zeros(1, 1, unet.config.cross_attention_dim))
    assert not unet.mid_block.resnets[0].conv1._forward_hooks  # every hook removed, also after an error
