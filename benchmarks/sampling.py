"""Sampling speed: our scan-compiled samplers around the Flax U-Net against the diffusers PyTorch loop.

Both sides run the same tiny SD-style U-Net (random PyTorch weights, saved and loaded through our interop) on
the same latents and text context, on this machine's default JAX backend and PyTorch's CPU. JAX times exclude
compilation (printed apart); both sides are the median (min-max) of --repeats runs after a warm-up, JAX and
PyTorch interleaved (A B A B ...); the load average is printed before and after, and a load above --max_load
refuses to time (benchmarks/timing.py). The PyTorch loop is diffusers' own:
`scheduler.step(unet(x, t, context).sample, t, x)` under `torch.inference_mode()`. The last column checks that
both produced the same final latent. Goal (issue 15): JAX / PyTorch <= 0.7.

    python -m benchmarks.sampling                  # DDIM 50 and UniPC 20, batch 2, 32x32 latents
    python -m benchmarks.sampling --batch 4 --size 16 --repeats 5
"""
from __future__ import annotations

import argparse
import tempfile
import time

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from editdiff.diffusion import ddim_sample, make_schedule, unipc_sample
from editdiff.interop.diffusers_unet import load_unet

from benchmarks import timing

# A small SD-1.x-shaped U-Net: two resolutions, cross-attention in the first, a cross-attention mid block.
TINY_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONTEXT_LENGTH = 8

SAMPLERS = {
    # name: (our sampler, its keyword arguments, the diffusers scheduler, number of steps)
    "DDIM": (ddim_sample, dict(spacing="leading"), diffusers.DDIMScheduler(**SD_SCHEDULE, clip_sample=False), 50),
    "UniPC": (unipc_sample, dict(spacing="linspace"), diffusers.UniPCMultistepScheduler(**SD_SCHEDULE), 20),
}


def build_unets(directory: str):
    """The same random U-Net as a diffusers (PyTorch) model and as our Flax model, through save/load."""
    torch.manual_seed(0)
    torch_unet = diffusers.UNet2DConditionModel(**TINY_UNET).eval()
    torch_unet.save_pretrained(directory)
    return torch_unet, load_unet(directory)


def jax_sampler(flax_unet, sampler, kwargs, num_steps, x_T, context):
    """(run, compile seconds, final latent, the compiled executable): the compiled sampler on (x_T, context),
    blocking."""
    graphdef, state = nnx.split(flax_unet)
    schedule = make_schedule(**SD_SCHEDULE)

    @jax.jit
    def sample(state, x_T, context):
        unet = nnx.merge(graphdef, state)
        return sampler(lambda z, t: unet(z, t, context), schedule, x_T, num_steps=num_steps, **kwargs)

    start = time.perf_counter()
    compiled = sample.lower(state, x_T, context).compile()
    compile_seconds = time.perf_counter() - start
    result = compiled(state, x_T, context).block_until_ready()
    return lambda: compiled(state, x_T, context).block_until_ready(), compile_seconds, np.asarray(result), compiled


def torch_sampler(torch_unet, scheduler, num_steps, x_T, context):
    """(run, final latent): diffusers' loop on (x_T, context)."""

    def sample():
        scheduler.set_timesteps(num_steps)
        x = x_T
        with torch.inference_mode():
            for t in scheduler.timesteps:
                x = scheduler.step(torch_unet(x, t, encoder_hidden_states=context).sample, t, x).prev_sample
        return x

    return sample, sample().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--repeats", type=int, default=3)
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)

    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((args.batch, args.size, args.size, 4)).astype(np.float32)
    context = rng.standard_normal((args.batch, CONTEXT_LENGTH, TINY_UNET["cross_attention_dim"])).astype(np.float32)
    with tempfile.TemporaryDirectory() as directory:
        torch_unet, flax_unet = build_unets(directory)

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} | PyTorch {torch.__version__} on CPU | "
          f"{timing.thread_counts()} | batch {args.batch}, latents {args.size}x{args.size}x4, median (min-max) of "
          f"{args.repeats}, interleaved")
    print(f"{'sampler':<8} {'steps':>5} {'JAX s':>20} {'compile s':>10} {'PyTorch s':>20} {'JAX/PyTorch':>12} "
          f"{'max |diff|':>11}")
    for name, (sampler, kwargs, scheduler, num_steps) in SAMPLERS.items():
        jax_run, compile_seconds, ours, _ = jax_sampler(flax_unet, sampler, kwargs, num_steps, jnp.asarray(x_T),
                                                     jnp.asarray(context))
        torch_run, theirs = torch_sampler(torch_unet, scheduler, num_steps,
                                          torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy()), torch.from_numpy(context))
        seconds = timing.interleaved({"jax": jax_run, "pytorch": torch_run}, args.repeats)
        difference = np.abs(ours - theirs.transpose(0, 2, 3, 1)).max()
        ratio = timing.median(seconds["jax"]) / timing.median(seconds["pytorch"])
        print(f"{name:<8} {num_steps:>5} {timing.spread(seconds['jax']):>20} {compile_seconds:>10.2f} "
              f"{timing.spread(seconds['pytorch']):>20} {ratio:>12.2f} {difference:>11.2e}")
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
