"""A Task-Plugin (editdiff/heads/task_plugin.py) for PyTorch: `config.json` + `task_plugin.safetensors`, and
`TorchTaskPlugin`, the same two branches from torch and diffusers parts (diffusers' Timesteps,
TimestepEmbedding and CrossAttnDownBlock2D for the SCB), with the same names:

    prompt.hidden.{0,1}, prompt.norms.{0,1}, prompt.out        the TPB's Linear / LayerNorm layers
    spatial.conv_in, spatial.time_embedding.linear_{1,2}        the SCB's stem and time MLP
    spatial.stage.{resnets,attentions}.*                        the CrossAttnDownBlock2D (diffusers' names)
    spatial.zero_convs.{i}                                      the residuals' 1x1 convs

`TorchTaskPlugin(clip_tokens (B, N, clip_width), latent (B, C, h, w), timesteps (B,))` returns (prompt tokens
(B, N, context_dim), residuals: num_residuals (B, C0, h, w)), the diffusers U-Net's first
`down_block_additional_residuals` (zeros for the rest).
"""
from __future__ import annotations

import dataclasses
import os

from editdiff.heads.task_plugin import TaskPlugin, TaskPluginConfig
from editdiff.interop.diffusers_unet import block_rules
from editdiff.interop.name_map import Rule, conv_rules, dense_rules, export_state_dict, norm_rules
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict, write_config, write_safetensors
from editdiff.nn.controlnet import ControlNetConfig

WEIGHTS_NAME = "task_plugin.safetensors"


def task_plugin_rules(plugin: TaskPlugin) -> list[Rule]:
    """One Rule per parameter: Flax path <-> TorchTaskPlugin state-dict key (module docstring)."""
    rules = []
    for i in range(len(plugin.prompt.hidden)):
        rules += dense_rules(("prompt", "hidden", i), f"prompt.hidden.{i}")
        rules += norm_rules(("prompt", "norms", i), f"prompt.norms.{i}")
    rules += dense_rules(("prompt", "out"), "prompt.out")
    rules += conv_rules(("spatial", "conv_in"), "spatial.conv_in")
    rules += dense_rules(("spatial", "time_embedding", "linear_1"), "spatial.time_embedding.linear_1")
    rules += dense_rules(("spatial", "time_embedding", "linear_2"), "spatial.time_embedding.linear_2")
    rules += block_rules(("spatial", "stage"), "spatial.stage", plugin.spatial.stage,
                         linear_projection=plugin.config.spatial.use_linear_projection)
    for i in range(len(plugin.spatial.zero_convs)):
        rules += conv_rules(("spatial", "zero_convs", i), f"spatial.zero_convs.{i}")
    return rules


def export_task_plugin(plugin: TaskPlugin, directory: str | os.PathLike) -> None:
    """Writes `config.json` (the TaskPluginConfig, its SCB stage as a diffusers ControlNet config) and the
    weights for `load_torch_task_plugin`."""
    config = {key: value for key, value in dataclasses.asdict(plugin.config).items() if key != "spatial"}
    write_config(directory, {"task_plugin": config, "spatial": plugin.config.spatial.to_diffusers()})
    write_safetensors(os.path.join(directory, WEIGHTS_NAME), export_state_dict(plugin, task_plugin_rules(plugin)))


def load_torch_task_plugin(directory: str | os.PathLike):
    """`TorchTaskPlugin` from an `export_task_plugin` directory, in eval mode; every key of the file used and
    every parameter set (a CheckpointError names any mismatch)."""
    import torch

    saved = read_config(directory)
    config = TaskPluginConfig(spatial=ControlNetConfig.from_diffusers(saved["spatial"]), **saved["task_plugin"])
    module = _torch_class()(config)
    state, path = read_state_dict(directory, [WEIGHTS_NAME])
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match TorchTaskPlugin: missing {missing}, unexpected {unexpected}")
    return module.eval()


def _torch_class():
    """TorchTaskPlugin, defined lazily so that importing this module never imports torch."""
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D
    from torch import nn
    from torch.nn import functional as F

    class TorchTaskPromptBranch(nn.Module):
        def __init__(self, config: TaskPluginConfig):
            super().__init__()
            widths = (config.clip_width, config.prompt_width, config.prompt_width)
            self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
            self.norms = nn.ModuleList([nn.LayerNorm(config.prompt_width) for _ in widths[1:]])
            self.out = nn.Linear(config.prompt_width, config.context_dim)
            self.slope = config.leaky_relu_slope

        def forward(self, clip_tokens):
            h = clip_tokens
            for dense, norm in zip(self.hidden, self.norms):
                h = F.leaky_relu(norm(dense(h)), self.slope)
            return self.out(h)

    class TorchSpatialComplementBranch(nn.Module):
        def __init__(self, config: TaskPluginConfig):
            super().__init__()
            spatial = config.spatial
            channels = spatial.block_out_channels[0]
            self.conv_in = nn.Conv2d(spatial.in_channels, channels, 3, padding=1)
            self.time_proj = Timesteps(channels, spatial.flip_sin_to_cos, spatial.freq_shift)
            self.time_embedding = TimestepEmbedding(channels, spatial.time_embed_dim)
            self.stage = CrossAttnDownBlock2D(
                in_channels=channels, out_channels=channels, temb_channels=spatial.time_embed_dim,
                num_layers=spatial.layers_per_block, transformer_layers_per_block=spatial.transformer_layers_per_block,
                resnet_eps=spatial.norm_eps, resnet_groups=spatial.norm_num_groups,
                num_attention_heads=spatial.attention_head_dim, cross_attention_dim=spatial.cross_attention_dim,
                add_downsample=False, use_linear_projection=spatial.use_linear_projection,
                upcast_attention=spatial.upcast_attention)
            self.zero_convs = nn.ModuleList([nn.Conv2d(channels, channels, 1) for _ in range(config.num_residuals)])

        def forward(self, latent, timesteps, prompt):
            emb = self.time_embedding(self.time_proj(timesteps).to(latent.dtype))
            h = self.conv_in(latent)
            _, layers = self.stage(h, emb, encoder_hidden_states=prompt)
            return tuple(conv(x) for conv, x in zip(self.zero_convs, (h, *layers)))

    class TorchTaskPlugin(nn.Module):
        """heads.task_plugin.TaskPlugin in PyTorch (NCHW latents)."""

        def __init__(self, config: TaskPluginConfig):
            super().__init__()
            self.prompt = TorchTaskPromptBranch(config)
            self.spatial = TorchSpatialComplementBranch(config)

        def forward(self, clip_tokens, latent, timesteps):
            prompt = self.prompt(clip_tokens)
            return prompt, self.spatial(latent, timesteps, prompt)

    return TorchTaskPlugin


def skip_shapes(unet_config: dict) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """([(channels, downsampling) per skip connection], (channels, downsampling) of the mid block) of a diffusers
    UNet2DConditionModel config: conv_in, then each down block's layers and downsampler."""
    channels, layers = unet_config["block_out_channels"], unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    skips, factor = [(channels[0], 1)], 1
    for i, (width, count) in enumerate(zip(channels, layers)):
        skips += [(width, factor)] * count
        if i < len(channels) - 1:
            factor *= 2
            skips.append((width, factor))
    return skips, (channels[-1], factor)


def torch_plugin_prediction(unet, plugin, clip_vision, pixel_values, z_t, timesteps, condition):
    """The diffusers U-Net's prediction with a TorchTaskPlugin: CLIP patch tokens (last hidden state before the
    post-LayerNorm, class token dropped) -> the plugin -> prompt tokens as encoder_hidden_states and residuals
    on the first skips (zeros on the rest and the mid block). pixel_values (B, 3, S, S) CLIP-normalised; z_t,
    condition (B, C, h, w); timesteps (B,). Returns (B, C, h, w)."""
    import torch

    tokens = clip_vision(pixel_values=pixel_values).last_hidden_state[:, 1:]
    prompt, residuals = plugin(tokens, condition, timesteps)
    skips, (mid_width, mid_factor) = skip_shapes(dict(unet.config))
    batch, _, height, width = z_t.shape
    zeros = [torch.zeros(batch, c, height // f, width // f) for c, f in skips[len(residuals):]]
    return unet(z_t, timesteps, encoder_hidden_states=prompt, down_block_additional_residuals=(*residuals, *zeros),
                mid_block_additional_residual=torch.zeros(batch, mid_width, height // mid_factor, width // mid_factor)
                ).sample


def exported_plugin_prediction_error(model, task: str, *, plugin_directory: str, unet_directory: str,
                                     clip_directory: str) -> float | None:
    """Max abs difference between `model.plugin_prediction(task, ...)` (an editdiff PluginModel) and
    `torch_plugin_prediction` from the exported plugin, the diffusers U-Net and the transformers CLIP vision
    tower on a fixed input: batch 2, random CLIP pixels, z_t and condition latent of the U-Net's sample size,
    t = (10, 900). None when torch, diffusers or transformers is not installed."""
    try:
        import diffusers
        import torch
        import transformers
    except ImportError:
        return None
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    unet_config = read_config(unet_directory)
    size, channels = unet_config["sample_size"], unet_config["in_channels"]
    clip_size = model.clip_vision.config.image_size
    keys = jax.random.split(jax.random.key(0), 3)
    pixels = jax.random.normal(keys[0], (2, clip_size, clip_size, 3), jnp.float32)
    z_t, condition = (jax.random.normal(k, (2, size, size, channels), jnp.float32) for k in keys[1:])
    t = jnp.array([10, 900], jnp.int32)

    def predict(m, pixels, z_t, t, condition):
        tokens = m.clip_vision(pixels).patch_tokens
        return m.plugin_prediction(task, z_t, t, tokens, condition)

    expected = np.asarray(nnx.jit(predict)(model, pixels, z_t, t, condition))
    nchw = lambda x: torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        got = torch_plugin_prediction(
            diffusers.UNet2DConditionModel.from_pretrained(unet_directory).eval(), load_torch_task_plugin(plugin_directory),
            transformers.CLIPVisionModel.from_pretrained(clip_directory).eval(), nchw(pixels), nchw(z_t),
            torch.from_numpy(np.array(t)).long(), nchw(condition))
    return float(np.abs(got.permute(0, 2, 3, 1).numpy() - expected).max())


SELECTOR_WEIGHTS_NAME = "plugin_selector.safetensors"


def export_plugin_selector(selector, directory: str | os.PathLike) -> None:
    """Writes the Plugin-Selector's heads as safetensors under torch names: visual_projection.{weight (E, D),
    bias}, text_projection.{weight, bias} (torch.nn.Linear's layout) and logit_scale (a scalar)."""
    import numpy as np

    os.makedirs(directory, exist_ok=True)
    tensors = {"logit_scale": np.asarray(selector.logit_scale[...], np.float32)}
    for name in ("visual_projection", "text_projection"):
        dense = getattr(selector, name)
        tensors[f"{name}.weight"] = np.asarray(dense.kernel[...], np.float32).T.copy()
        tensors[f"{name}.bias"] = np.asarray(dense.bias[...], np.float32)
    write_safetensors(os.path.join(directory, SELECTOR_WEIGHTS_NAME), tensors)
