"""Shared by the U-Net / ControlNet tests: tiny diffusers configs, random PyTorch weights, NCHW<->NHWC."""
from __future__ import annotations

import numpy as np
import torch
from flax import nnx

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
