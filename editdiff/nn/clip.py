"""CLIP's image and text encoders (Radford et al., 2021) as Flax NNX modules, laid out like transformers'.

`CLIPVisionModel` is transformers' CLIPVisionModelWithProjection and `CLIPTextModel` its
CLIPTextModelWithProjection: attribute names follow theirs (vision_model.pre_layrnorm, encoder.layers[i].self_attn
.q_proj, ...) so that `editdiff.interop.transformers_clip` maps parameters one to one. Images enter as
(B, H, W, C) pixel values already normalised with CLIP's mean / std (see `editdiff.nn.clip_preprocess`), text as
(B, L) token ids. Parameters are float32; `dtype` is the compute dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.layers import dot_product_attention

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


# transformers' ACT2FN names; its "gelu" is torch's exact (erf) GELU.
HIDDEN_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def _config_error(config_name: str, key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{config_name}.{key}={value!r} is not supported; allowed: {allowed}")


def _check_positive_ints(config: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise _config_error(type(config).__name__, key, value, "a positive int")


def _check_common(config: Any) -> None:
    """The checks both towers share: sizes, heads dividing the width, a known activation, no dropout."""
    name = type(config).__name__
    _check_positive_ints(config, ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                                  "num_attention_heads"))
    if config.hidden_size % config.num_attention_heads:
        raise _config_error(name, "num_attention_heads", config.num_attention_heads,
                            f"a divisor of hidden_size={config.hidden_size}")
    if config.hidden_act not in HIDDEN_ACTIVATIONS:
        raise _config_error(name, "hidden_act", config.hidden_act, " or ".join(map(repr, HIDDEN_ACTIVATIONS)))
    eps = config.layer_norm_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise _config_error(name, "layer_norm_eps", config.layer_norm_eps, "a positive float")
    # The encoders are used frozen here, so dropout is not implemented; a checkpoint asking for it is refused
    # rather than silently run without it.
    if config.attention_dropout != 0:
        raise _config_error(name, "attention_dropout", config.attention_dropout, "0 (dropout is not implemented)")


def _from_transformers_dict(cls, config: Mapping[str, Any]):
    """The fields of `cls` read from a transformers config dict; absent keys keep transformers' defaults.

    Other keys (model_type, architectures, dtype, generation settings, ...) do not change the encoder and are
    not read.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers' CLIPVisionConfig, same names and defaults (openai/clip-vit-base-patch32).

    Only square images of one int size with an int patch size are supported, as transformers' own embedding
    computes them.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0

    def __post_init__(self):
        _check_common(self)
        _check_positive_ints(self, ("num_channels", "image_size", "patch_size"))
        if self.image_size % self.patch_size:
            raise _config_error("CLIPVisionConfig", "patch_size", self.patch_size,
                                f"a divisor of image_size={self.image_size}")

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_transformers_dict(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
        return _from_transformers_dict(cls, config)

    def to_transformers_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """transformers' CLIPTextConfig, same names and defaults (openai/clip-vit-base-patch32).

    `eos_token_id` selects the pooled token exactly as transformers does: 2 (configs written before
    transformers PR #24773) pools at the largest token id of each sequence, any other id at its first
    occurrence. `bos_token_id` / `pad_token_id` do not change the encoder; they are kept for export.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        _check_common(self)
        _check_positive_ints(self, ("vocab_size", "max_position_embeddings"))
        eos = self.eos_token_id
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < self.vocab_size:
            raise _config_error("CLIPTextConfig", "eos_token_id", eos,
                                f"one int token id in [0, vocab_size={self.vocab_size})")

    @classmethod
    def from_transformers_dict(cls, config: Mapping[str, Any]) -> "CLIPTextConfig":
        return _from_transformers_dict(cls, config)

    def to_transformers_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CLIPAttention(nnx.Module):
    """Multi-head self-attention over (B, L, D) tokens, optionally causal; returns (B, L, D)."""

    def __init__(self, hidden_size: int, num_heads: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        linear = lambda: nnx.Linear(hidden_size, hidden_size, dtype=dtype, rngs=rngs)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = linear(), linear(), linear(), linear()

    def __call__(self, x: jax.Array, *, causal: bool) -> jax.Array:
        split_heads = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)
        out = dot_product_attention(split_heads(self.q_proj(x)), split_heads(self.k_proj(x)),
                                    split_heads(self.v_proj(x)), is_causal=causal)
        return self.out_proj(out.reshape(*x.shape))


class CLIPMLP(nnx.Module):
    """fc2(act(fc1(x))); (B, L, D) -> (B, L, D)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, *, dtype: Dtype,
                 rngs: nnx.Rngs):
        self.activation = HIDDEN_ACTIVATIONS[hidden_act]
        self.fc1 = nnx.Linear(hidden_size, intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(intermediate_size, hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.activation(self.fc1(x)))


def layer_norm(features: int, eps: float, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch.nn.LayerNorm(features, eps) over the last axis."""
    # The two-pass variance matches torch to float32 rounding; the one-pass E[x^2] - E[x]^2 drifts on the
    # large-magnitude residual stream of deep CLIP towers.
    return nnx.LayerNorm(features, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class CLIPEncoderLayer(nnx.Module):
    """The pre-norm transformer block: x += attn(ln1(x)); x += mlp(ln2(x)); (B, L, D) -> (B, L, D)."""

    def __init__(self, config: CLIPVisionConfig | CLIPTextConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        self.layer_norm1 = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.self_attn = CLIPAttention(d, config.num_attention_heads, dtype=dtype, rngs=rngs)
        self.layer_norm2 = layer_norm(d, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, causal: bool) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """`num_hidden_layers` encoder layers. Returns every hidden state: the input, then each layer's output
    (num_hidden_layers + 1 arrays of (B, L, D)), as transformers' `hidden_states`."""

    def __init__(self, config: CLIPVisionConfig | CLIPTextConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([CLIPEncoderLayer(config, dtype=dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, *, causal: bool) -> tuple[jax.Array, ...]:
        hidden_states = [x]
        for layer in self.layers:
            hidden_states.append(layer(hidden_states[-1], causal=causal))
        return tuple(hidden_states)


class CLIPVisionEmbeddings(nnx.Module):
    """[class token; patch embeddings] + position embeddings; (B, S, S, C) -> (B, 1 + (S/P)^2, D)."""

    def __init__(self, config: CLIPVisionConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        self.dtype = dtype
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32) * d ** -0.5)
        self.patch_embedding = nnx.Conv(config.num_channels, d, (p, p), strides=p, padding="VALID",
                                        use_bias=False, dtype=dtype, rngs=rngs)
        self.position_embedding = nnx.Embed(config.num_positions, d, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        b, h, w, _ = pixel_values.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"CLIP vision input is {h}x{w}; this model takes {self.image_size}x{self.image_size} "
                             "(resize with editdiff.nn.clip_preprocess)")
        patches = self.patch_embedding(pixel_values)  # (B, S/P, S/P, D), row-major like torch's flatten(2)
        patches = patches.reshape(b, -1, patches.shape[-1])
        class_token = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, patches.shape[-1]))
        tokens = jnp.concatenate([class_token, patches], axis=1)
        return tokens + self.position_embedding.embedding[...].astype(self.dtype)[None]


class CLIPVisionTransformer(nnx.Module):
    """Embeddings, pre-LayerNorm, encoder; post-LayerNorm on the class token only (the pooled output)."""

    def __init__(self, config: CLIPVisionConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = CLIPVisionEmbeddings(config, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = layer_norm(d, eps, dtype=dtype, rngs=rngs)  # sic: transformers' spelling
        self.encoder = CLIPEncoder(config, dtype=dtype, rngs=rngs)
        self.post_layernorm = layer_norm(d, eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        hidden_states = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), causal=False)
        return hidden_states, self.post_layernorm(hidden_states[-1][:, 0])


class CLIPVisionOutput(NamedTuple):
    """What `CLIPVisionModel` returns; names as transformers'.

    last_hidden_state: (B, 1 + N, D), the last encoder layer's output (no post-LayerNorm), class token first.
    hidden_states: num_hidden_layers + 1 arrays (B, 1 + N, D): the encoder input (after pre-LayerNorm), then each
        layer's output; hidden_states[-1] is last_hidden_state.
    pooler_output: (B, D), post-LayerNorm of the class token.
    image_embeds: (B, projection_dim), visual_projection(pooler_output), not normalised.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooler_output: jax.Array
    image_embeds: jax.Array

    @property
    def patch_tokens(self) -> jax.Array:
        """(B, N, D): the last encoder layer's hidden state before post-LayerNorm, class token dropped (the
        features Diff-Plugin's task-prompt branch reads)."""
        return self.last_hidden_state[:, 1:]


class CLIPVisionModel(nnx.Module):
    """transformers' CLIPVisionModelWithProjection: (B, S, S, C) CLIP-normalised pixels -> CLIPVisionOutput."""

    def __init__(self, config: CLIPVisionConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, dtype=dtype, rngs=rngs)
        self.visual_projection = nnx.Linear(config.hidden_size, config.projection_dim, use_bias=False,
                                            dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> CLIPVisionOutput:
        hidden_states, pooled = self.vision_model(pixel_values)
        return CLIPVisionOutput(last_hidden_state=hidden_states[-1], hidden_states=hidden_states,
                                pooler_output=pooled, image_embeds=self.visual_projection(pooled))


class CLIPTextEmbeddings(nnx.Module):
    """Token embeddings + position embeddings of positions 0..L-1; (B, L) ids -> (B, L, D)."""

    def __init__(self, config: CLIPTextConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.token_embedding = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.position_embedding = nnx.Embed(config.max_position_embeddings, config.hidden_size, dtype=dtype,
                                            rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        length, max_length = input_ids.shape[-1], self.position_embedding.num_embeddings
        if length > max_length:
            raise ValueError(f"CLIP text input has {length} tokens; max_position_embeddings is {max_length}")
        positions = self.position_embedding.embedding[:length].astype(self.dtype)
        return self.token_embedding(input_ids) + positions[None]


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """(B,) index of the token transformers pools for each (B, L) sequence.

    eos_token_id 2 marks configs from before transformers PR #24773, where the EOS token is taken to be the
    largest id in the sequence; otherwise it is the first occurrence of eos_token_id (padding may repeat it).
    argmax returns the first maximum, as torch's does.
    """
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextTransformer(nnx.Module):
    """Embeddings, causal encoder, final LayerNorm; pooled output at the EOS token."""

    def __init__(self, config: CLIPTextConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = CLIPEncoder(config, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
        hidden_states = self.encoder(self.embeddings(input_ids), causal=True)
        last_hidden_state = self.final_layer_norm(hidden_states[-1])
        eos = eos_positions(input_ids, self.eos_token_id)
        pooled = jnp.take_along_axis(last_hidden_state, eos[:, None, None], axis=1)[:, 0]
        return hidden_states, last_hidden_state, pooled


class CLIPTextOutput(NamedTuple):
    """What `CLIPTextModel` returns; names as transformers'.

    last_hidden_state: (B, L, D), after the final LayerNorm (what Stable Diffusion's U-Net attends to).
    hidden_states: num_hidden_layers + 1 arrays (B, L, D): the embeddings, then each layer's output (before the
        final LayerNorm).
    pooler_output: (B, D), last_hidden_state at each sequence's EOS token (see `eos_positions`).
    text_embeds: (B, projection_dim), text_projection(pooler_output), not normalised.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    pooler_output: jax.Array
    text_embeds: jax.Array


class CLIPTextModel(nnx.Module):
    """transformers' CLIPTextModelWithProjection: (B, L) token ids -> CLIPTextOutput.

    Attention is causal only; transformers' optional padding `attention_mask` is not taken. With the CLIP
    tokenizer's right padding it changes nothing up to the EOS token (causal attention already hides the pads
    that follow), so pooled and projected outputs are the same; only the hidden states at padded positions
    would differ.
    """

    def __init__(self, config: CLIPTextConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, dtype=dtype, rngs=rngs)
        self.text_projection = nnx.Linear(config.hidden_size, config.projection_dim, use_bias=False, dtype=dtype,
                                          rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> CLIPTextOutput:
        hidden_states, last_hidden_state, pooled = self.text_model(input_ids)
        return CLIPTextOutput(last_hidden_state=last_hidden_state, hidden_states=hidden_states,
                              pooler_output=pooled, text_embeds=self.text_projection(pooled))
