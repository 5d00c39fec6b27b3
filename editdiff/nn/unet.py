"""The SD-1.x / SD-2.x latent U-Net (diffusers' UNet2DConditionModel) in Flax NNX, NHWC.

`UNetConfig` carries diffusers' config.json names one to one; `UNet2DConditionModel` computes

    emb = time_embedding(sinusoid(t));  h = conv_in(z)
    h, skips = down_blocks(h, emb, context)      # skips[i] += down_residuals[i]   (ControlNet convention)
    h = mid_block(h, emb, context) + mid_residual
    h = up_blocks(h, skips, emb, context)
    eps = conv_out(silu(conv_norm_out(h)))

`modulation` (the rectifier's, METHODS.md §2) modulates the kernels of the mid and up blocks' convs per sample;
`modulation_paths(unet)` lists the convs it may name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.layers import (TIME_EMBEDDING_NORMS, ModulatedConv, TimestepEmbedding, conv2d, group_norm,
                                timestep_embedding)
from editdiff.nn.modulated_conv import Modulation, offset_shapes, submodulation
from editdiff.nn.unet_blocks import AttentionSpec, CrossAttentionSpec, DownBlock2D, UNetMidBlock2D, UpBlock2D

Dtype = jnp.dtype

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
CLASS_EMBED_TYPES = (None, "projection")

# diffusers config keys we do not implement: accepted only with the value that leaves the model unchanged.
UNET_FIXED_KEYS: dict[str, Any] = {
    "center_input_sample": False, "only_cross_attention": False, "dropout": 0.0,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "dual_cross_attention": False, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None,
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64, "num_attention_heads": None,
}


def per_block(value: int | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """A per-block setting given as one int (same for every block) or one value per block, as a tuple."""
    return (value,) * num_blocks if isinstance(value, int) else tuple(value)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_lists(value: Any) -> Any:
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_from_diffusers(cls: type, config: Mapping[str, Any], fixed_keys: Mapping[str, Any]) -> Any:
    """Builds dataclass `cls` from a diffusers config.json dict.

    Keys starting with "_" (class name, version) are metadata; keys in `fixed_keys` must hold exactly that
    value; any other key must be a field of `cls`. Anything else is a ValueError naming every offending key.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs, problems = {}, []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in fields:
            kwargs[key] = _as_tuples(value)
        elif key in fixed_keys:
            if _as_tuples(value) != _as_tuples(fixed_keys[key]):
                problems.append(f"{key}={value!r} (only {fixed_keys[key]!r} is supported)")
        else:
            problems.append(f"{key}={value!r} (unknown key)")
    if problems:
        raise ValueError(f"{cls.__name__}.from_diffusers: unsupported config: {'; '.join(problems)}")
    return cls(**kwargs)


def config_to_diffusers(class_name: str, config: Any) -> dict:
    """Dataclass `config` as the config.json dict diffusers' `class_name`.from_pretrained reads."""
    return {"_class_name": class_name, **{k: _as_lists(v) for k, v in dataclasses.asdict(config).items()}}


def freeze_sequences(config: Any) -> None:
    """Turns list fields of a frozen dataclass into tuples in place: configs are static (hashed) under jit."""
    for field in dataclasses.fields(config):
        object.__setattr__(config, field.name, _as_tuples(getattr(config, field.name)))


def check_choice(owner: str, key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: {key}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def check_per_block(owner: str, key: str, value: Any, num_blocks: int) -> None:
    if not isinstance(value, int) and len(value) != num_blocks:
        raise ValueError(f"{owner}: {key}={value!r} must be an int or have one entry per block ({num_blocks})")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """diffusers' UNet2DConditionModel config, the subset we implement (fields carry config.json names).

    `attention_head_dim` is, as in diffusers, the number of heads (its historical misnomer; diffusers'
    UNet2DConditionModel rejects `num_attention_heads`, so do we); per-block settings are an int or one value
    per down block. `upcast_attention` is kept for export only: our attention always computes its logits and
    softmax in float32. diffusers' "UNetMidBlock2D" in this model is a single resnet without attention.
    `class_embed_type` "projection" adds class_embedding(class_labels) — the time MLP's shape from
    `projection_class_embeddings_input_dim` to time_embed_dim — to the time embedding, so a per-example vector
    reaches every ResNet; `resnet_time_scale_shift` "scale_shift" makes that embedding scale and shift each
    ResNet's second group norm instead of adding to its input (`ResnetBlock2D`).
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                       "CrossAttnUpBlock2D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    class_embed_type: str | None = None
    projection_class_embeddings_input_dim: int | None = None
    resnet_time_scale_shift: str = "default"

    def __post_init__(self):
        freeze_sequences(self)
        owner, n = "UNetConfig", len(self.down_block_types)
        for block_type in self.down_block_types:
            check_choice(owner, "down_block_types", block_type, DOWN_BLOCK_TYPES)
        for block_type in self.up_block_types:
            check_choice(owner, "up_block_types", block_type, UP_BLOCK_TYPES)
        check_choice(owner, "mid_block_type", self.mid_block_type, MID_BLOCK_TYPES)
        check_choice(owner, "act_fn", self.act_fn, ("silu", "swish"))
        check_choice(owner, "downsample_padding", self.downsample_padding, (0, 1))
        check_choice(owner, "class_embed_type", self.class_embed_type, CLASS_EMBED_TYPES)
        check_choice(owner, "resnet_time_scale_shift", self.resnet_time_scale_shift, TIME_EMBEDDING_NORMS)
        input_dim = self.projection_class_embeddings_input_dim
        if self.class_embed_type == "projection" and not (isinstance(input_dim, int) and input_dim > 0):
            raise ValueError(f"{owner}: class_embed_type='projection' needs projection_class_embeddings_input_dim, "
                             f"a positive int (got {input_dim!r})")
        for key in ("block_out_channels", "up_block_types"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{owner}: {key}={getattr(self, key)!r} must have one entry per down block ({n})")
        for key in ("layers_per_block", "transformer_layers_per_block", "attention_head_dim"):
            check_per_block(owner, key, getattr(self, key), n)
        for key in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, key) % 2 != 1:
                raise ValueError(f"{owner}: {key}={getattr(self, key)!r} must be odd (same-size convolution)")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(f"{owner}: block_out_channels={self.block_out_channels!r} must be multiples of "
                                 f"norm_num_groups={self.norm_num_groups}")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "UNetConfig":
        """From a diffusers UNet2DConditionModel config.json dict; unsupported keys or values raise ValueError."""
        return config_from_diffusers(cls, config, UNET_FIXED_KEYS)

    def to_diffusers(self) -> dict:
        """The config.json dict diffusers' UNet2DConditionModel.from_pretrained reads."""
        return config_to_diffusers("UNet2DConditionModel", self)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def has_cross_attention(self) -> bool:
        return ("CrossAttnDownBlock2D" in self.down_block_types or "CrossAttnUpBlock2D" in self.up_block_types
                or self.mid_block_type == "UNetMidBlock2DCrossAttn")


def stack_down_blocks(config, attention: Sequence[AttentionSpec | None], *, temb_channels: int,
                      time_embedding_norm: str = "default", dtype: Dtype, rngs: nnx.Rngs) -> nnx.List:
    """The encoder stages of a U-Net-like `config` (diffusers' block_out_channels, layers_per_block,
    norm_num_groups, norm_eps, downsample_padding), block i with attention `attention[i]`."""
    n = len(config.block_out_channels)
    layers = per_block(config.layers_per_block, n)
    blocks, out_channels = [], config.block_out_channels[0]
    for i in range(n):
        in_channels, out_channels = out_channels, config.block_out_channels[i]
        blocks.append(DownBlock2D(in_channels, out_channels, temb_channels=temb_channels, num_layers=layers[i],
                                  add_downsample=i < n - 1, groups=config.norm_num_groups, eps=config.norm_eps,
                                  downsample_padding=config.downsample_padding, attention=attention[i],
                                  time_embedding_norm=time_embedding_norm, dtype=dtype, rngs=rngs))
    return nnx.List(blocks)


def stack_up_blocks(config, attention: Sequence[AttentionSpec | None], *, temb_channels: int,
                    time_embedding_norm: str = "default", dtype: Dtype, rngs: nnx.Rngs) -> nnx.List:
    """The decoder stages, mirroring the encoder: per-block settings reversed, one more layer per block (the
    extra layer consumes the downsampler's skip connection); up block i with attention `attention[i]`."""
    n = len(config.block_out_channels)
    layers = per_block(config.layers_per_block, n)[::-1]
    channels = config.block_out_channels[::-1]
    return nnx.List([
        UpBlock2D(channels[min(i + 1, n - 1)], channels[max(i - 1, 0)], channels[i], temb_channels=temb_channels,
                  num_layers=layers[i] + 1, add_upsample=i < n - 1, groups=config.norm_num_groups,
                  eps=config.norm_eps, attention=attention[i], time_embedding_norm=time_embedding_norm,
                  dtype=dtype, rngs=rngs)
        for i in range(n)])


def _cross_attention_specs(config, block_types: Sequence[str], attention_implementation: str | None,
                           reverse: bool = False) -> list[CrossAttentionSpec | None]:
    """One spec per block of an SD-style `config` ("CrossAttn*" blocks; per-block settings reversed for the
    decoder), None for blocks without attention."""
    n = len(block_types)
    heads = per_block(config.attention_head_dim, n)
    transformer_layers = per_block(config.transformer_layers_per_block, n)
    if reverse:
        heads, transformer_layers = heads[::-1], transformer_layers[::-1]
    return [CrossAttentionSpec(heads[i], config.cross_attention_dim, transformer_layers[i], attention_implementation)
            if block_type.startswith("CrossAttn") else None for i, block_type in enumerate(block_types)]


def _time_norm(config) -> str:
    # A ControlNet's config has no such field: its ResNets are always "default" (ControlNetConfig.from_unet).
    return getattr(config, "resnet_time_scale_shift", "default")


def build_down_blocks(config, *, temb_channels: int, attention_implementation: str | None, dtype: Dtype,
                      rngs: nnx.Rngs) -> nnx.List:
    """The encoder stages of a U-Net or ControlNet `config` (both carry diffusers' field names)."""
    specs = _cross_attention_specs(config, config.down_block_types, attention_implementation)
    return stack_down_blocks(config, specs, temb_channels=temb_channels, time_embedding_norm=_time_norm(config),
                             dtype=dtype, rngs=rngs)


def build_mid_block(config, *, temb_channels: int, attention_implementation: str | None, dtype: Dtype,
                    rngs: nnx.Rngs) -> UNetMidBlock2D:
    """The middle stage of a U-Net or ControlNet `config`, as diffusers' `get_mid_block` builds it."""
    n = len(config.down_block_types)
    common = dict(temb_channels=temb_channels, groups=config.norm_num_groups, eps=config.norm_eps,
                  output_scale_factor=config.mid_block_scale_factor, time_embedding_norm=_time_norm(config),
                  dtype=dtype, rngs=rngs)
    if config.mid_block_type == "UNetMidBlock2DCrossAttn":
        spec = CrossAttentionSpec(per_block(config.attention_head_dim, n)[-1], config.cross_attention_dim,
                                  per_block(config.transformer_layers_per_block, n)[-1], attention_implementation)
        return UNetMidBlock2D(config.block_out_channels[-1], num_layers=1, attention=spec, **common)
    return UNetMidBlock2D(config.block_out_channels[-1], num_layers=0, **common)


def build_up_blocks(config: UNetConfig, *, temb_channels: int, attention_implementation: str | None, dtype: Dtype,
                    rngs: nnx.Rngs) -> nnx.List:
    """The decoder stages of a U-Net `config`."""
    specs = _cross_attention_specs(config, config.up_block_types, attention_implementation, reverse=True)
    return stack_up_blocks(config, specs, temb_channels=temb_channels, time_embedding_norm=_time_norm(config),
                           dtype=dtype, rngs=rngs)


def checkpointed(call: Callable, remat: bool) -> Callable:
    """`call(block, *arrays)`, under activation checkpointing (nnx.remat) when `remat`: the backward pass
    recomputes the block's activations instead of keeping them, trading compute for memory."""
    return nnx.remat(call) if remat else call


def run_down_blocks(blocks: Sequence[DownBlock2D], h: jax.Array, emb: jax.Array, context: jax.Array | None,
                    *, remat: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    """The encoder pass from conv_in's output h: (deepest features, every skip connection with h first); each
    block checkpointed when `remat`."""
    skips = [h]
    call = checkpointed(lambda block, h, emb, context: block(h, emb, context), remat)
    for block in blocks:
        h, block_skips = call(block, h, emb, context)
        skips.extend(block_skips)
    return h, skips


def _up_block_call(upsample_size: tuple[int, int] | None) -> Callable:
    """An up block's call with its (static) upsample size closed over: the checkpoint traces only arrays."""
    return lambda block, h, skips, emb, context, modulation: block(h, skips, emb, context, upsample_size, modulation)


def run_up_blocks(blocks: Sequence[UpBlock2D], h: jax.Array, skips: Sequence[jax.Array], emb: jax.Array,
                  context: jax.Array | None, modulation: Modulation | None, *, remat: bool = False) -> jax.Array:
    """The decoder pass: each up block consumes one skip per layer from the end of `skips`; `modulation` holds
    U-Net paths ("up_blocks", i, ...); each block checkpointed when `remat`."""
    skips = list(skips)
    for i, block in enumerate(blocks):
        block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        # Upsample to the next skip's size, not 2x, so odd latent sizes line up (diffusers' upsample_size).
        upsample_size = skips[-1].shape[1:3] if block.upsample is not None else None
        call = checkpointed(_up_block_call(upsample_size), remat)
        h = call(block, h, tuple(block_skips), emb, context, submodulation(modulation, "up_blocks", i))
    return h


MODULATED_STAGES = ("mid_block", "up_blocks")


def modulation_paths(unet: nnx.Module) -> list[tuple[tuple, tuple[int, int, int, int]]]:
    """The convs a U-Net's `modulation` may name, in call order, each with its kernel shape (kh, kw, Cin, Cout):
    the ModulatedConvs of the mid and up blocks (every resnet's conv1 and conv2, every upsampler's conv).

    Offsets for a conv of kernel shape (kh, kw, Cin, Cout) are a (B, kh, kw, Cin) and b (B, kh, kw, Cout).
    """
    return [(tuple(path), tuple(node.kernel_shape)) for path, node in nnx.iter_graph(unet)
            if isinstance(node, ModulatedConv) and path and path[0] in MODULATED_STAGES]


def check_modulation(unet: nnx.Module, modulation: Modulation, batch: int) -> None:
    """Raises ValueError naming every path of `modulation` that is no modulated conv of `unet`, and every
    (a, b) whose shapes are not the conv's (B, kh, kw, Cin) and (B, kh, kw, Cout)."""
    kernel_shapes = dict(modulation_paths(unet))
    problems = []
    for path, offsets in modulation.items():
        if path not in kernel_shapes:
            problems.append(f"{path!r} is not a conv of the mid or up blocks (see modulation_paths)")
            continue
        expected = offset_shapes(batch, kernel_shapes[path])
        got = tuple(getattr(o, "shape", None) for o in offsets) if isinstance(offsets, (tuple, list)) else None
        if got != expected:
            problems.append(f"{path!r}: offsets of shapes {got}, expected a {expected[0]} and b {expected[1]}")
    if problems:
        raise ValueError(f"{type(unet).__name__}: modulation does not fit the model: " + "; ".join(problems))


def embed_timesteps(time_embedding: TimestepEmbedding, config, timesteps: jax.Array | float, batch: int,
                    dtype: Dtype) -> jax.Array:
    """(B,) or scalar timesteps -> (B, time_embed_dim) embedding: sinusoid(t) then the time MLP."""
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
    sinusoid = timestep_embedding(timesteps, config.block_out_channels[0], flip_sin_to_cos=config.flip_sin_to_cos,
                                  freq_shift=config.freq_shift)
    return time_embedding(sinusoid.astype(dtype))


def num_skip_connections(config) -> int:
    """conv_in's output, one per down-block layer, one per downsampler: the length of `down_residuals`."""
    n = len(config.down_block_types)
    return 1 + sum(per_block(config.layers_per_block, n)) + (n - 1)


class UNet2DConditionModel(nnx.Module):
    """The conditional denoiser; params float32, computation in `dtype`. `attention_implementation` is passed
    to `jax.nn.dot_product_attention` (None: XLA chooses; "cudnn": the fused flash kernel, GPU, bf16/fp16).
    `remat`: activation checkpointing of every down, mid and up block (the backward pass recomputes each
    block's activations: less memory for large batches, more compute; benchmarks/unet.py --remat measures it)."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 attention_implementation: str | None = None, remat: bool = False):
        self.config = config
        self.dtype = dtype
        self.attention_implementation = attention_implementation
        self.remat = remat
        channels = config.block_out_channels
        temb = config.time_embed_dim
        self.conv_in = conv2d(config.in_channels, channels[0], config.conv_in_kernel,
                              padding=(config.conv_in_kernel - 1) // 2, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(channels[0], temb, dtype=dtype, rngs=rngs)
        self.class_embedding = (None if config.class_embed_type is None else TimestepEmbedding(
            config.projection_class_embeddings_input_dim, temb, dtype=dtype, rngs=rngs))
        blocks = dict(temb_channels=temb, attention_implementation=attention_implementation, dtype=dtype, rngs=rngs)
        self.down_blocks = build_down_blocks(config, **blocks)
        self.mid_block = build_mid_block(config, **blocks)
        self.up_blocks = build_up_blocks(config, **blocks)
        self.conv_norm_out = group_norm(channels[0], groups=config.norm_num_groups, eps=config.norm_eps,
                                        dtype=dtype, rngs=rngs)
        self.conv_out = conv2d(channels[0], config.out_channels, config.conv_out_kernel,
                               padding=(config.conv_out_kernel - 1) // 2, dtype=dtype, rngs=rngs)

    def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array | None,
                 *, class_labels: jax.Array | None = None, down_residuals: Sequence[jax.Array | None] | None = None,
                 mid_residual: jax.Array | None = None, modulation: Modulation | None = None) -> jax.Array:
        """Predicts (B, H, W, out_channels) in `dtype` from a (B, H, W, in_channels) latent.

        timesteps: (B,) or a scalar. encoder_hidden_states: (B, L, cross_attention_dim), may be None only when
        no block has cross-attention. class_labels: (B, projection_class_embeddings_input_dim), required
        exactly when the config has a class embedding. down_residuals: one (B, h, w, c) per skip connection (diffusers'
        ControlNet order, `num_skip_connections(config)` of them; None entries add nothing), added to the skips;
        mid_residual: (B, h, w, c) added to the mid-block output. modulation: {conv path from
        `modulation_paths(self)`: (a (B, kh, kw, Cin), b (B, kh, kw, Cout))}, each conv's kernel becoming
        kernel * (1 + a b^T) per sample; zero offsets change nothing, bit for bit.
        """
        if encoder_hidden_states is None and self.config.has_cross_attention:
            raise ValueError("UNet2DConditionModel: encoder_hidden_states is None but the config has "
                             "cross-attention blocks")
        if (class_labels is None) != (self.class_embedding is None):
            raise ValueError(f"UNet2DConditionModel: class_embed_type={self.config.class_embed_type!r} but "
                             f"class_labels {'not ' if class_labels is None else ''}given")
        if down_residuals is not None and len(down_residuals) != num_skip_connections(self.config):
            raise ValueError(f"UNet2DConditionModel: {len(down_residuals)} down_residuals given, the U-Net has "
                             f"{num_skip_connections(self.config)} skip connections")
        if modulation is not None:
            check_modulation(self, modulation, sample.shape[0])
        context = None if encoder_hidden_states is None else encoder_hidden_states.astype(self.dtype)
        emb = embed_timesteps(self.time_embedding, self.config, timesteps, sample.shape[0], self.dtype)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels.astype(self.dtype))

        h, skips = run_down_blocks(self.down_blocks, self.conv_in(sample.astype(self.dtype)), emb, context,
                                   remat=self.remat)
        if down_residuals is not None:
            skips = [s if r is None else s + r.astype(s.dtype) for s, r in zip(skips, down_residuals)]

        mid = checkpointed(lambda block, h, emb, context, modulation: block(h, emb, context, modulation), self.remat)
        h = mid(self.mid_block, h, emb, context, submodulation(modulation, "mid_block"))
        if mid_residual is not None:
            h = h + mid_residual.astype(h.dtype)

        h = run_up_blocks(self.up_blocks, h, skips, emb, context, modulation, remat=self.remat)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))
