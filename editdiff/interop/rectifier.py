"""The rectifier R (editdiff/heads/rectifier.py) and the U-Net it modulates, in PyTorch.

`export_rectifier` writes R as a directory of its own:

    config.json              {"rectifier": RectifierConfig's fields, "layers": [{"name": diffusers module name of
                             a modulated conv, e.g. "up_blocks.0.upsamplers.0.conv", "kernel_shape": [kh, kw,
                             Cin, Cout]}, ...]} (the layers in R's order; the names come from the U-Net's name
                             map, `unet_rules`)
    rectifier.safetensors    R's parameters in torch layouts, the BatchNorms' running averages included
                             (`*.running_mean`, `*.running_var`)

and `load_torch_rectifier` builds `TorchRectifier` from it, R in PyTorch in eval mode (the running averages).
`modulated(unet, modulation)` makes a diffusers UNet2DConditionModel or UNet2DModel compute the modulated convs. A rectified
noise prediction in PyTorch, all tensors NCHW (what `torch_rectified_prediction` computes):

    frozen = unet(z_t, t, context).sample                        the frozen U-Net and the null context
                                                                 (a UNet2DModel base: unet(z_t, t), no context)
    P_t = x_0 estimate of `frozen` at (z_t, t)                    the scheduler's alphas_cumprod and prediction type
    with modulated(unet, rectifier(z_0, P_t, t)):                {conv name: (a, b)}
        prediction = unet(z_t, t, context).sample

`exported_prediction_error` runs this from the exported files against the JAX `rectified_prediction`: the
export's self-check (the rectifier method's export stores it in its rectifier.json).

Offsets keep the JAX layout whatever the framework: a (B, kh, kw, Cin), b (B, kh, kw, Cout); a conv with torch
weight W (Cout, Cin, kh, kw) then convolves sample n with W[o, i, y, x] * (1 + a[n, y, x, i] b[n, y, x, o]).

torch and diffusers are imported only when a function needs them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
from flax import nnx

from editdiff.diffusion.parameterisation import x0_and_eps_at
from editdiff.heads.rectifier import FLIP_SIN_TO_COS, FREQ_SHIFT, Rectifier, RectifierConfig
from editdiff.interop.diffusers_unet import unet_rules
from editdiff.interop.name_map import Layout, Rule, conv_rules, dense_rules, export_state_dict, norm_rules
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict, write_config, write_safetensors
from editdiff.nn.unet import UNet2DConditionModel
from editdiff.nn.unet2d import UNet2DModel

WEIGHTS_NAME = "rectifier.safetensors"


def diffusers_conv_names(unet: UNet2DConditionModel | UNet2DModel, paths: Sequence[tuple]) -> list[str]:
    """The diffusers module names of the convs at Flax `paths` of `unet`, e.g. ("up_blocks", 0, "upsample",
    "conv") -> "up_blocks.0.upsamplers.0.conv", read off the name map the U-Net's export uses. A path that
    names no conv of `unet` is a ValueError naming it."""
    names = {rule.flax_path[:-1]: rule.torch_key.removesuffix(".weight") for rule in unet_rules(unet)
             if rule.flax_path[-1] == "kernel" and rule.layout is Layout.CONV}
    unknown = [path for path in paths if path not in names]
    if unknown:
        raise ValueError(f"diffusers_conv_names: no conv of the U-Net at {unknown}")
    return [names[path] for path in paths]


# -- the name map -------------------------------------------------------------------------------------------
# TorchRectifier's modules carry R's attribute names, so a Flax path and its torch key spell the same modules.


def _key(path: tuple) -> str:
    return ".".join(map(str, path))


def _batch_norm_statistics(path: tuple) -> list[Rule]:
    """An nnx.BatchNorm's running averages (nnx.BatchStat mean, var) <-> torch BatchNorm2d's buffers."""
    return [Rule((*path, "mean"), f"{_key(path)}.running_mean"), Rule((*path, "var"), f"{_key(path)}.running_var")]


def _rules(rectifier: Rectifier) -> tuple[list[Rule], list[Rule]]:
    """(one Rule per parameter, one per BatchNorm running average) of `rectifier`."""
    conv_norm_pairs = [(("encoder", "stem_conv"), ("encoder", "stem_bn"))]
    for i, block in enumerate(rectifier.encoder.blocks):
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        pairs += [("shortcut_conv", "shortcut_bn")] if block.shortcut_conv is not None else []
        conv_norm_pairs += [(("encoder", "blocks", i, conv), ("encoder", "blocks", i, norm)) for conv, norm in pairs]
    params, statistics = [], []
    for conv, norm in conv_norm_pairs:  # convs without bias, each followed by a BatchNorm
        params += [Rule((*conv, "kernel"), f"{_key(conv)}.weight", Layout.CONV), *norm_rules(norm, _key(norm))]
        statistics += _batch_norm_statistics(norm)
    for name in ("linear_1", "linear_2"):
        params += dense_rules(("time_embedding", name), f"time_embedding.{name}")
    for k, subnet in enumerate(rectifier.subnets):
        for j in range(len(subnet.convs)):
            params += conv_rules(("subnets", k, "convs", j), f"subnets.{k}.convs.{j}")
        for name in ("time_emb_proj", "head_a", "head_b"):
            params += dense_rules(("subnets", k, name), f"subnets.{k}.{name}")
    return params, statistics


def rectifier_state_dict(rectifier: Rectifier) -> dict[str, np.ndarray]:
    """R's parameters and BatchNorm running averages as TorchRectifier's state dict (float32 numpy, torch
    layouts), without the BatchNorms' num_batches_tracked (unused by eval mode)."""
    params, statistics = _rules(rectifier)
    state = export_state_dict(rectifier, params)
    stats = {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(rectifier, nnx.BatchStat))}
    if set(stats) != {rule.flax_path for rule in statistics}:
        raise CheckpointError(f"name map out of date with the rectifier: BatchStats {sorted(stats, key=str)}, "
                              f"rules for {sorted((r.flax_path for r in statistics), key=str)}")
    return {**state, **{rule.torch_key: np.asarray(stats[rule.flax_path][...], np.float32) for rule in statistics}}


# -- export and load ----------------------------------------------------------------------------------------


def export_rectifier(rectifier: Rectifier, directory: str | os.PathLike,
                     unet: UNet2DConditionModel | UNet2DModel) -> None:
    """Writes `config.json` and `rectifier.safetensors` (module docstring) for `load_torch_rectifier`; the
    layers' diffusers names are those of R's Flax conv paths in `unet`, the U-Net R modulates."""
    paths = [path for path, _ in rectifier.layers]
    layers = [{"name": name, "kernel_shape": list(shape)}
              for name, (_, shape) in zip(diffusers_conv_names(unet, paths), rectifier.layers)]
    write_config(directory, {"rectifier": dataclasses.asdict(rectifier.config), "layers": layers})
    write_safetensors(os.path.join(directory, WEIGHTS_NAME), rectifier_state_dict(rectifier))


def load_torch_rectifier(directory: str | os.PathLike):
    """`TorchRectifier` from an `export_rectifier` directory, in eval mode: every key of the file used, every
    parameter and running average of the module set (a CheckpointError names any mismatch)."""
    import torch

    config = read_config(directory)
    layers = [(layer["name"], tuple(layer["kernel_shape"])) for layer in config["layers"]]
    module = _torch_classes()(RectifierConfig(**config["rectifier"]), layers)
    state, path = read_state_dict(directory, [WEIGHTS_NAME])
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [key for key in missing if not key.endswith(".num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match TorchRectifier: missing {missing}, unexpected {unexpected}")
    return module.eval()


def _torch_classes():
    """TorchRectifier, defined lazily so that importing this module never imports torch."""
    import torch
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from torch import nn
    from torch.nn import functional as F

    def batch_norm(channels: int, config: RectifierConfig) -> nn.BatchNorm2d:
        # flax's momentum is the running average's decay, torch's the new batch's weight.
        return nn.BatchNorm2d(channels, eps=1e-5, momentum=1.0 - config.batch_norm_momentum)

    def conv_no_bias(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)

    class BasicBlock(nn.Module):
        """heads.rectifier.BasicBlock, (B, in, H, W) -> (B, out, H/stride, W/stride)."""

        def __init__(self, in_channels: int, out_channels: int, stride: int, config: RectifierConfig):
            super().__init__()
            self.conv1, self.bn1 = conv_no_bias(in_channels, out_channels, 3, stride), batch_norm(out_channels, config)
            self.conv2, self.bn2 = conv_no_bias(out_channels, out_channels, 3, 1), batch_norm(out_channels, config)
            if stride != 1 or in_channels != out_channels:
                self.shortcut_conv = conv_no_bias(in_channels, out_channels, 1, stride)
                self.shortcut_bn = batch_norm(out_channels, config)
            else:
                self.shortcut_conv = self.shortcut_bn = None

        def forward(self, x):
            h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
            return F.relu(h + shortcut)

    class GlobalEncoder(nn.Module):
        """heads.rectifier.GlobalEncoder, (B, in_channels, H, W) -> (B, feature_channels, h, w)."""

        def __init__(self, config: RectifierConfig):
            super().__init__()
            self.stem_conv = conv_no_bias(config.in_channels, config.base_channels, 7, config.stem_stride)
            self.stem_bn = batch_norm(config.base_channels, config)
            blocks, channels = [], config.base_channels
            for stage, num_blocks in enumerate(config.stage_blocks):
                out_channels = config.base_channels * 2 ** stage
                for i in range(num_blocks):
                    blocks.append(BasicBlock(channels, out_channels, 2 if stage > 0 and i == 0 else 1, config))
                    channels = out_channels
            self.blocks = nn.ModuleList(blocks)

        def forward(self, x):
            h = F.relu(self.stem_bn(self.stem_conv(x)))
            for block in self.blocks:
                h = block(h)
            return h

    class Subnet(nn.Module):
        """heads.rectifier.Subnet: features (B, feature_channels, h, w), temb (B, code_dim) ->
        (a (B, kh, kw, Cin), b (B, kh, kw, Cout))."""

        def __init__(self, kernel_shape: Sequence[int], config: RectifierConfig):
            super().__init__()
            kh, kw, cin, cout = kernel_shape
            self.a_shape, self.b_shape = (kh, kw, cin), (kh, kw, cout)
            self.slope = config.leaky_relu_slope
            d, n = config.code_dim, config.subnet_downsamples
            widths = [config.feature_channels] + [config.subnet_channels] * n + [d]
            self.convs = nn.ModuleList(nn.Conv2d(w_in, w_out, 3, 1 if i == 0 else 2, 1)
                                       for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])))
            self.time_emb_proj = nn.Linear(d, d)
            self.head_a, self.head_b = nn.Linear(d, kh * kw * cin), nn.Linear(d, kh * kw * cout)

        def forward(self, features, temb):
            h = features
            for conv in self.convs:
                h = F.leaky_relu(conv(h), self.slope)
            code = F.leaky_relu(h.mean(dim=(2, 3)) + self.time_emb_proj(F.silu(temb)), self.slope)
            batch = code.shape[0]
            return self.head_a(code).reshape(batch, *self.a_shape), self.head_b(code).reshape(batch, *self.b_shape)

    class TorchRectifier(nn.Module):
        """R in PyTorch (eval mode: BatchNorm with the running averages): `forward(x0 (B, C, H, W), estimate
        (B, C, H, W), t (B,) or scalar)` -> {diffusers conv name: (a (B, kh, kw, Cin), b (B, kh, kw, Cout))} in
        the exported layers' order, for `modulated(unet, ...)`."""

        def __init__(self, config: RectifierConfig, layers: Sequence[tuple[str, tuple[int, int, int, int]]]):
            super().__init__()
            self.config, self.names = config, [name for name, _ in layers]
            self.encoder = GlobalEncoder(config)
            self.sinusoid = Timesteps(config.time_embedding_dim, FLIP_SIN_TO_COS, FREQ_SHIFT)
            self.time_embedding = TimestepEmbedding(config.time_embedding_dim, config.code_dim)
            self.subnets = nn.ModuleList(Subnet(shape, config) for _, shape in layers)

        def forward(self, x0, estimate, t):
            t = torch.as_tensor(t, dtype=torch.float32, device=x0.device).expand(x0.shape[0])
            features = self.encoder(torch.cat([x0, estimate], dim=1))
            temb = self.time_embedding(self.sinusoid(t))
            return {name: subnet(features, temb) for name, subnet in zip(self.names, self.subnets)}

    return TorchRectifier


# -- the modulated diffusers U-Net --------------------------------------------------------------------------


def _modulation_problems(convs: Mapping[str, object], modulation: Mapping[str, tuple]) -> list[str]:
    import torch

    problems = []
    for name, offsets in modulation.items():
        conv = convs.get(name)
        if not isinstance(conv, torch.nn.Conv2d):
            problems.append(f"{name!r} is no Conv2d of the U-Net")
            continue
        if conv.groups != 1 or conv.padding_mode != "zeros":
            problems.append(f"{name!r} is a grouped or non-zero-padded conv (not supported)")
            continue
        cout, cin, kh, kw = conv.weight.shape
        got = [tuple(o.shape) for o in offsets] if isinstance(offsets, (tuple, list)) else None
        batch = got[0][0] if got and got[0] else None  # a's batch, which b must share
        if got != [(batch, kh, kw, cin), (batch, kh, kw, cout)]:
            problems.append(f"{name!r}: offsets of shapes {got}, expected a (B, {kh}, {kw}, {cin}) and "
                            f"b (B, {kh}, {kw}, {cout})")
    return problems


def _add_modulation(a, b):
    """A forward hook adding conv(x; W * a b^T) per sample to a Conv2d's output (W (Cout, Cin, kh, kw)): the
    modulated conv's output is the plain one plus this, as ModulatedConv computes it in JAX."""
    import torch
    from torch.nn import functional as F

    def hook(conv, inputs, output):
        x = inputs[0]
        batch, cin, height, width = x.shape
        if batch != a.shape[0]:
            raise ValueError(f"modulated: offsets for batch {a.shape[0]}, the conv's input has batch {batch}")
        # W[o, i, y, x] * a[n, y, x, i] * b[n, y, x, o]: one kernel per sample, run as a grouped conv.
        kernels = conv.weight[None] * torch.einsum("nyxi,nyxo->noiyx", a, b)
        delta = F.conv2d(x.reshape(1, batch * cin, height, width), kernels.reshape(-1, *conv.weight.shape[1:]),
                         None, conv.stride, conv.padding, conv.dilation, groups=batch)
        return output + delta.reshape(batch, -1, *delta.shape[2:])

    return hook


@contextlib.contextmanager
def modulated(unet, modulation: Mapping[str, tuple]):
    """Within the block, each conv of the diffusers model `unet` named in `modulation` ({module name, e.g.
    "mid_block.resnets.0.conv1": (a (B, kh, kw, Cin), b (B, kh, kw, Cout))}, the TorchRectifier's output)
    convolves sample n with W * (1 + a_n b_n^T) per kernel tap (module docstring); on exit every conv is
    plain again. A name that is no Conv2d of `unet`, or offsets of other shapes, is a ValueError naming each,
    before anything changes; inputs of another batch size than the offsets' are a ValueError in the forward."""
    convs = dict(unet.named_modules())
    problems = _modulation_problems(convs, modulation)
    if problems:
        raise ValueError(f"modulated: modulation does not fit {type(unet).__name__}: " + "; ".join(problems))
    handles = [convs[name].register_forward_hook(_add_modulation(a, b)) for name, (a, b) in modulation.items()]
    try:
        yield unet
    finally:
        for handle in handles:
            handle.remove()


def torch_rectified_prediction(unet, rectifier, context, alphas_cumprod, prediction_type: str, z_t, t, z_0):
    """The rectified prediction in PyTorch (module docstring), without gradients: diffusers `unet`,
    `rectifier` a TorchRectifier, context (B, tokens, dim) (None for a UNet2DModel), alphas_cumprod (T,) float32 and `prediction_type`
    the schedule's (a DDIMScheduler's), z_t and z_0 (B, C, h, w), t (B,) int -> (B, C, h, w)."""
    import torch

    context = () if context is None else (context,)
    with torch.no_grad():
        frozen = unet(z_t, t, *context).sample
        alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        # The JAX arithmetic (parameterisation.py), on torch tensors.
        estimate, _ = x0_and_eps_at(prediction_type, alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt(), z_t, frozen)
        with modulated(unet, rectifier(z_0, estimate, t)):
            return unet(z_t, t, *context).sample


def exported_prediction_error(model, schedule, *, unet_directory: str, rectifier_directory: str,
                              scheduler_directory: str, null_context: np.ndarray | None) -> float | None:
    """Max abs difference between `model.rectified_prediction(schedule, ...)` (a RectifiedModel, in eval mode)
    and `torch_rectified_prediction` from the exported files (diffusers U-Net, TorchRectifier, DDIMScheduler's
    alphas_cumprod and prediction type, the null context (1, tokens, dim), None for a UNet2DModel) on a fixed input: random z_t, z_0
    of R's latent shape, batch 2, t = (10, 900). None when torch or diffusers is not installed."""
    try:
        import torch
        import diffusers
    except ImportError:
        return None
    import jax
    import jax.numpy as jnp

    height, width = np.broadcast_to(model.rectifier.config.image_size, (2,))
    shape = (2, int(height), int(width), model.rectifier.config.in_channels // 2)  # R sees concat(z_0, P_t)
    z_t, z_0 = (jax.random.normal(jax.random.key(seed), shape, jnp.float32) for seed in (0, 1))
    t = jnp.array([10, 900], jnp.int32)
    expected = np.asarray(nnx.jit(lambda m, *args: m.rectified_prediction(schedule, *args))(model, z_t, t, z_0))
    scheduler = diffusers.DDIMScheduler.from_pretrained(scheduler_directory)
    unet_class = diffusers.UNet2DConditionModel if null_context is not None else diffusers.UNet2DModel
    context = None if null_context is None else torch.from_numpy(null_context).expand(2, -1, -1)
    nchw = lambda x: torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())
    got = torch_rectified_prediction(
        unet_class.from_pretrained(unet_directory).eval(), load_torch_rectifier(rectifier_directory),
        context, scheduler.alphas_cumprod, scheduler.config.prediction_type,
        nchw(z_t), torch.from_numpy(np.array(t)).long(), nchw(z_0))
    return float(np.abs(got.permute(0, 2, 3, 1).numpy() - expected).max())
