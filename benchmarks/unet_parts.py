"""Where the sampling loop's time goes: the tiny sampling U-Net's parts, JAX against diffusers PyTorch.

The U-Net of `benchmarks/sampling.py` (same random weights on both sides through our interop), batch 2 at
32x32x4 latents, forward only (PyTorch under `torch.inference_mode()`): each row times one part on the input
shape it sees inside the U-Net — the whole forward, conv_in, the first ResNet block's GroupNorm + SiLU, that
block and the first Transformer2DModel (self- and cross-attention over 1024 tokens) at 32x32, the second level's
ResNet block at 16x16, the mid block — JAX (one jitted call of the part, its dispatch included: small parts
are dominated by it) and PyTorch interleaved (benchmarks/timing.py), median (min-max) of --repeats calls, and
the sampler rows: a DDIM-50 run per step against one forward, which is the scan's and the scheduler's cost per
step. `python -m benchmarks.profile` has the operations' times inside the compiled programs.

    python -m benchmarks.unet_parts
"""
from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from benchmarks import timing
from benchmarks.sampling import CONTEXT_LENGTH, SAMPLERS, TINY_UNET, build_unets, jax_sampler, torch_sampler


def _jax_call(module, *args):
    """A blocking call of the jitted `module(*args)`."""
    call = nnx.jit(lambda m, *a: m(*a))
    return lambda: jax.block_until_ready(call(module, *args))


def _torch_call(module, *args, **kwargs):
    def run():
        with torch.inference_mode():
            return module(*args, **kwargs)

    return run


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--repeats", type=int, default=15)
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)

    rng = np.random.default_rng(0)
    b, s, widths = args.batch, args.size, TINY_UNET["block_out_channels"]
    z = rng.standard_normal((b, s, s, 4)).astype(np.float32)
    context = rng.standard_normal((b, CONTEXT_LENGTH, TINY_UNET["cross_attention_dim"])).astype(np.float32)
    # The first ResNet block of each level reads the previous level's width (after its downsampler).
    hidden = {level: rng.standard_normal((b, s >> level, s >> level, widths[0])).astype(np.float32) for level in (0, 1)}
    temb = rng.standard_normal((b, 4 * widths[0])).astype(np.float32)
    t = np.full((b,), 500, np.int64)
    with tempfile.TemporaryDirectory() as directory:
        torch_unet, flax_unet = build_unets(directory)
    torch_unet.eval()
    J, T = jnp.asarray, torch.from_numpy

    parts = {
        "U-Net forward": (_jax_call(flax_unet, J(z), J(t), J(context)),
                          _torch_call(torch_unet, _nchw(z), T(t), encoder_hidden_states=T(context))),
        "conv_in 3x3 (4 -> 32 ch)": (_jax_call(flax_unet.conv_in, J(z)), _torch_call(torch_unet.conv_in, _nchw(z))),
        "GroupNorm + SiLU (32 ch, 32x32)": (
            _jax_call(nnx.Sequential(flax_unet.down_blocks[0].resnets[0].norm1, jax.nn.silu), J(hidden[0])),
            _torch_call(torch.nn.Sequential(torch_unet.down_blocks[0].resnets[0].norm1, torch.nn.SiLU()),
                        _nchw(hidden[0]))),
        "down 0 ResNet (32 ch, 32x32)": (
            _jax_call(flax_unet.down_blocks[0].resnets[0], J(hidden[0]), J(temb)),
            _torch_call(torch_unet.down_blocks[0].resnets[0], _nchw(hidden[0]), T(temb))),
        "down 0 Transformer2D (1024 tokens)": (
            _jax_call(flax_unet.down_blocks[0].attentions[0], J(hidden[0]), J(context)),
            _torch_call(torch_unet.down_blocks[0].attentions[0], _nchw(hidden[0]), encoder_hidden_states=T(context))),
        "down 1 ResNet (32 -> 64 ch, 16x16)": (
            _jax_call(flax_unet.down_blocks[1].resnets[0], J(hidden[1]), J(temb)),
            _torch_call(torch_unet.down_blocks[1].resnets[0], _nchw(hidden[1]), T(temb))),
    }
    mid = rng.standard_normal((b, s >> 1, s >> 1, widths[1])).astype(np.float32)
    parts["mid block (64 ch, 16x16)"] = (_jax_call(flax_unet.mid_block, J(mid), J(temb), J(context)),
                                         _torch_call(torch_unet.mid_block, _nchw(mid), T(temb),
                                                     encoder_hidden_states=T(context)))

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} | PyTorch {torch.__version__} on CPU | "
          f"{timing.thread_counts()} | batch {b}, latents {s}x{s}x4, median (min-max) of {args.repeats}, interleaved")
    print("| part | JAX ms | PyTorch ms | JAX / PyTorch |\n| --- | --- | --- | --- |")
    forward = {}
    for name, (ours, theirs) in parts.items():
        seconds = timing.interleaved({"jax": ours, "pytorch": theirs}, args.repeats)
        if name == "U-Net forward":
            forward = {side: timing.median(values) for side, values in seconds.items()}
        ms = {side: f"{1e3 * timing.median(v):.2f} ({1e3 * min(v):.2f}-{1e3 * max(v):.2f})" for side, v in seconds.items()}
        print(f"| {name} | {ms['jax']} | {ms['pytorch']} | "
              f"{timing.median(seconds['jax']) / timing.median(seconds['pytorch']):.2f} |")

    sampler, kwargs, scheduler, num_steps = SAMPLERS["DDIM"]
    jax_run, _, _, _ = jax_sampler(flax_unet, sampler, kwargs, num_steps, J(z), J(context))
    torch_run, _ = torch_sampler(torch_unet, scheduler, num_steps, _nchw(z), T(context))
    seconds = timing.interleaved({"jax": jax_run, "pytorch": torch_run}, 3)
    for side in ("jax", "pytorch"):
        per_step = timing.median(seconds[side]) / num_steps
        print(f"| DDIM-{num_steps} per step, {side} | {1e3 * per_step:.2f} ms | one forward {1e3 * forward[side]:.2f} ms "
              f"| loop overhead per step {1e3 * (per_step - forward[side]):.2f} ms |")
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
