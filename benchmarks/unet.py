"""U-Net training speed: one jitted train step (forward + backward + Adam) of our Flax U-Net against diffusers'
PyTorch UNet2DConditionModel with torch.optim.Adam, same config, same weights, same machine.

Loss: mean squared error of the predicted noise. JAX: `jax.jit` of a pure step on `nnx.split` state with the
parameters and optimiser state donated; compile time (lower + compile) printed apart; FLOPs per step from XLA's
cost analysis of the compiled step. Step times are the median (min-max) of --steps steps after one warm-up step,
JAX and PyTorch steps interleaved (A B A B ...) where both models' Adam states fit in host memory together
(the tiny config; SD-1.5 size runs PyTorch's steps, frees them, then JAX's). The load average is printed before
and after, and a load above --max_load refuses to time (benchmarks/timing.py). MFU is printed when
--peak_tflops (the device's dense peak for --dtype) is given. Goal (issue 15), on CPU: JAX step time <= 0.7x
PyTorch's at the tiny config, <= 0.6x at SD-1.5 size.

Memory: the compiled step's XLA buffers (arguments, temporaries: the activations kept for the backward pass)
from its memory analysis, and the process's peak host RSS after the run (on CPU the device memory is host
memory). `--remat` checkpoints every U-Net block (UNet2DConditionModel(remat=True)): run the command with and
without it, one process each, for the memory / time trade-off (peak RSS is per process).

    python -m benchmarks.unet                                  # tiny config, 16x16 latent, batch 2
    python -m benchmarks.unet --config sd15 --steps 3          # SD-1.5 size, 32x32 latent, batch 1 (slow on CPU)
    python -m benchmarks.unet --config sd15 --steps 3 --batch 4 --no_torch [--remat]   # the remat trade-off
    # GPU: SD-1.5 at 512 px (64x64 latent), bf16, cuDNN flash attention; 989 = H100 SXM dense bf16 TFLOP/s
    python -m benchmarks.unet --config sd15 --latent 64 --batch 8 --dtype bfloat16 --attention cudnn \\
        --peak_tflops 989 --no_torch
"""
from __future__ import annotations

import argparse
import resource
import time

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from editdiff.interop.diffusers_unet import unet_rules
from editdiff.interop.name_map import load_state_dict
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.tracing import abstract_module

from benchmarks import timing

CONFIGS = {
    # (diffusers config, default latent size, default batch, text context length)
    "tiny": (dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
                  norm_num_groups=8), 16, 2, 8),
    # Stable Diffusion 1.5's UNet2DConditionModel config (diffusers' defaults with cross_attention_dim 768).
    "sd15": (dict(sample_size=64, cross_attention_dim=768), 32, 1, 77),
}
LEARNING_RATE = 1e-4


def make_batch(config: dict, latent: int, batch: int, context_length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(sample=rng.standard_normal((batch, latent, latent, 4)).astype(np.float32),
                noise=rng.standard_normal((batch, latent, latent, 4)).astype(np.float32),
                timesteps=rng.integers(0, 1000, batch),
                context=rng.standard_normal((batch, context_length, config["cross_attention_dim"])).astype(np.float32))


def torch_step(torch_unet: torch.nn.Module, batch: dict):
    """(step, release): one PyTorch forward + backward + Adam step, and a function freeing its Adam moments."""
    torch_unet.train()
    optimizer = torch.optim.Adam(torch_unet.parameters(), lr=LEARNING_RATE)
    sample = torch.from_numpy(batch["sample"].transpose(0, 3, 1, 2).copy())
    noise = torch.from_numpy(batch["noise"].transpose(0, 3, 1, 2).copy())
    timesteps, context = torch.from_numpy(batch["timesteps"]), torch.from_numpy(batch["context"])

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.mean((torch_unet(sample, timesteps, context).sample - noise) ** 2)
        loss.backward()
        optimizer.step()

    def release():
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()

    return step, release


def flax_unet_like(torch_unet: torch.nn.Module, config: dict, dtype, attention: str | None, remat: bool = False
                   ) -> UNet2DConditionModel:
    """Our U-Net holding `torch_unet`'s weights (through the interop name map, without a file)."""
    model = abstract_module(lambda: UNet2DConditionModel(UNetConfig.from_diffusers(config), rngs=nnx.Rngs(0),
                                                         dtype=dtype, attention_implementation=attention,
                                                         remat=remat))
    state_dict = {k: v.detach().numpy() for k, v in torch_unet.state_dict().items()}
    load_state_dict(model, state_dict, unet_rules(model), source="torch model")
    return model


def jax_step(model: UNet2DConditionModel, batch: dict):
    """(compile seconds, step, FLOPs per step, XLA memory analysis, the compiled executable) of a jitted
    forward + backward + Adam step."""
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(LEARNING_RATE)

    def train_step(params, opt_state, batch):
        def loss_fn(params):
            prediction = nnx.merge(graphdef, params)(batch["sample"], batch["timesteps"], batch["context"])
            return jnp.mean((prediction.astype(jnp.float32) - batch["noise"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt_state": optimizer.init(params)}
    batch = jax.device_put(batch)
    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(state["params"], state["opt_state"], batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", float("nan")))
    memory = compiled.memory_analysis()

    def step():
        state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"], batch)
        loss.block_until_ready()

    return compile_seconds, step, flops, memory, compiled


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="tiny")
    parser.add_argument("--latent", type=int, help="latent height = width (default per config)")
    parser.add_argument("--batch", type=int, help="batch size (default per config)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="JAX compute dtype")
    parser.add_argument("--peak_tflops", type=float, help="device dense peak TFLOP/s for --dtype, for MFU")
    parser.add_argument("--attention", choices=["xla", "cudnn"], help="dot_product_attention implementation")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch side (e.g. on a GPU machine)")
    parser.add_argument("--remat", action="store_true", help="checkpoint every U-Net block (JAX side)")
    timing.add_load_flag(parser)
    args = parser.parse_args()

    timing.check_load("at start", args.max_load)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} ({args.dtype}{', remat' if args.remat else ''})"
          f" | PyTorch {torch.__version__} on CPU (float32) | {timing.thread_counts()}")
    print(f"{'config':<6} {'latent':>6} {'batch':>5} {'JAX compile s':>13} {'JAX step s':>20} {'PyTorch step s':>20} "
          f"{'JAX/PyTorch':>11} {'GFLOP/step':>10} {'TFLOP/s':>8} {'img/s':>7} {'MFU':>6} {'timing':>12} "
          f"{'XLA args MiB':>12} {'XLA temp MiB':>12}")
    for name in CONFIGS if args.config == "all" else [args.config]:
        config, latent, batch_size, context_length = CONFIGS[name]
        latent, batch_size = args.latent or latent, args.batch or batch_size
        batch = make_batch(config, latent, batch_size, context_length)
        torch.manual_seed(0)
        torch_unet = diffusers.UNet2DConditionModel(**config)
        # Both Adam states together do not fit a 24 GiB host at SD-1.5 size: PyTorch's steps run first, and
        # its model and moments are freed before the JAX side allocates its own.
        together = name != "sd15" and not args.no_torch
        seconds = {"pytorch": [float("nan")]}
        if not args.no_torch and not together:
            step, release = torch_step(torch_unet, batch)
            seconds = timing.interleaved({"pytorch": step}, args.steps)
            release()
        model = flax_unet_like(torch_unet, config, jnp.dtype(args.dtype), args.attention, args.remat)
        if not together:
            del torch_unet
        compile_seconds, step, flops, memory, _ = jax_step(model, batch)
        if together:
            torch_timed, release = torch_step(torch_unet, batch)
            seconds = timing.interleaved({"jax": step, "pytorch": torch_timed}, args.steps)
            release()
            del torch_unet
        else:
            seconds |= timing.interleaved({"jax": step}, args.steps)
        jax_seconds, torch_seconds = timing.median(seconds["jax"]), timing.median(seconds["pytorch"])
        tflops = flops / jax_seconds / 1e12
        mfu = f"{tflops / args.peak_tflops:6.1%}" if args.peak_tflops else f"{'-':>6}"
        torch_spread = timing.spread(seconds["pytorch"]) if not args.no_torch else "-"
        print(f"{name:<6} {latent:>6} {batch_size:>5} {compile_seconds:>13.1f} {timing.spread(seconds['jax']):>20} "
              f"{torch_spread:>20} {jax_seconds / torch_seconds:>11.2f} {flops / 1e9:>10.1f} {tflops:>8.3f} "
              f"{batch_size / jax_seconds:>7.2f} {mfu} {'interleaved' if together else 'sequential':>12} "
              f"{memory.argument_size_in_bytes / 2**20:>12.0f} {memory.temp_size_in_bytes / 2**20:>12.0f}")
    # ru_maxrss is in KiB on Linux: the whole process (both frameworks' models and steps) at its peak.
    print(f"peak host RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
