"""Shared by the U-Net / ControlNet tests: tiny diffusers configs, random PyTorch weights, NCHW<->NHWC,
modulation offsets and their slow reference."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from editdiff.nn.modulated_conv import offset_shapes
from editdiff.nn.unet import modulation_paths

# SD-1.x style: conv projections, one head count for every block, cross_attention_dim unlike any width.
SD1_TINY = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=4,
                norm_num_groups=8)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Gives every parameter a random value: norm scales around 1, biases and zero-initialised convs non-zero,
    so that a parity test cannot pass by a parameter being ignored."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / np.sqrt(fan_in))
    return model.eval()


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


@nnx.jit
def apply(model: nnx.Module, *args, **kwargs):
    """model(*args, **kwargs) compiled once per shape: eager JAX compiles op by op, far slower here."""
    return model(*args, **kwargs)


def assert_same_state_dict(got: dict, want: dict):
    """Same keys, bit-identical tensors."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def random_modulation(model: nnx.Module, batch: int, *, seed: int = 0, scale: float = 0.3) -> dict:
    """Random offsets (a, b) for every conv of `modulation_paths(model)`; scale 0 gives zeros."""
    rng = np.random.default_rng(seed)
    modulation = {}
    for path, kernel_shape in modulation_paths(model):
        a_shape, b_shape = offset_shapes(batch, kernel_shape)
        modulation[path] = (jnp.asarray(scale * rng.standard_normal(a_shape), jnp.float32),
                            jnp.asarray(scale * rng.standard_normal(b_shape), jnp.float32))
    return modulation


def with_modulated_kernels(model: nnx.Module, modulation: dict) -> nnx.Module:
    """A copy of `model` whose kernel at each path of a batch-1 `modulation` is kernel * (1 + a b^T): what the
    modulated model must compute, written the slow way."""
    copy = nnx.clone(model)
    for path, (a, b) in modulation.items():
        conv = copy
        for name in path:
            conv = conv[name] if isinstance(name, int) else getattr(conv, name)
        conv.kernel.set_value(conv.kernel[...] * (1 + a[0][..., :, None] * b[0][..., None, :]))
    return copy
