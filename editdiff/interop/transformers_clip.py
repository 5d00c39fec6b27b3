"""transformers CLIP checkpoints <-> `editdiff.nn.clip`, and the CLIP tokenizer.

Reads a local transformers directory (config.json + model.safetensors or pytorch_model.bin) holding a full
`CLIPModel` (both towers; the projection width is its top-level `projection_dim`) or a
`CLIPVisionModelWithProjection` / `CLIPTextModelWithProjection`. Exports write a *WithProjection directory that
transformers' `from_pretrained` loads with no missing or unexpected keys. Every parameter has an explicit rule;
a checkpoint that does not match raises CheckpointError listing all missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from editdiff.interop.name_map import Layout, Rule, dense_rules, export_state_dict, load_state_dict, norm_rules
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict, write_config, write_safetensors
from editdiff.nn.clip import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel
from editdiff.tracing import abstract_module

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXPORT_WEIGHTS = "model.safetensors"

# Per tower: the model_type of its own config, the key of its sub-config inside a CLIPModel config, the
# *WithProjection class transformers builds, and the state-dict prefixes of the tower and of its projection.
_TOWERS = {
    "vision": dict(model_type="clip_vision_model", sub_config="vision_config",
                   architecture="CLIPVisionModelWithProjection", prefix="vision_model", projection="visual_projection"),
    "text": dict(model_type="clip_text_model", sub_config="text_config",
                 architecture="CLIPTextModelWithProjection", prefix="text_model", projection="text_projection"),
}


def _encoder_rules(flax_path: tuple, torch_key: str, num_layers: int) -> list[Rule]:
    rules = []
    for i in range(num_layers):
        f, t = flax_path + ("layers", i), f"{torch_key}.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rules += dense_rules(f + ("self_attn", proj), f"{t}.self_attn.{proj}")
        rules += dense_rules(f + ("mlp", "fc1"), f"{t}.mlp.fc1") + dense_rules(f + ("mlp", "fc2"), f"{t}.mlp.fc2")
        rules += norm_rules(f + ("layer_norm1",), f"{t}.layer_norm1")
        rules += norm_rules(f + ("layer_norm2",), f"{t}.layer_norm2")
    return rules


def vision_rules(config: CLIPVisionConfig) -> list[Rule]:
    """Every parameter of `CLIPVisionModel` <-> CLIPVisionModelWithProjection / CLIPModel state-dict keys."""
    return [
        Rule(("vision_model", "embeddings", "class_embedding"), "vision_model.embeddings.class_embedding"),
        Rule(("vision_model", "embeddings", "patch_embedding", "kernel"),
             "vision_model.embeddings.patch_embedding.weight", Layout.CONV),
        Rule(("vision_model", "embeddings", "position_embedding", "embedding"),
             "vision_model.embeddings.position_embedding.weight"),
        *norm_rules(("vision_model", "pre_layrnorm"), "vision_model.pre_layrnorm"),
        *_encoder_rules(("vision_model", "encoder"), "vision_model.encoder", config.num_hidden_layers),
        *norm_rules(("vision_model", "post_layernorm"), "vision_model.post_layernorm"),
        *dense_rules(("visual_projection",), "visual_projection", bias=False),
    ]


def text_rules(config: CLIPTextConfig) -> list[Rule]:
    """Every parameter of `CLIPTextModel` <-> CLIPTextModelWithProjection / CLIPModel state-dict keys."""
    return [
        Rule(("text_model", "embeddings", "token_embedding", "embedding"), "text_model.embeddings.token_embedding.weight"),
        Rule(("text_model", "embeddings", "position_embedding", "embedding"),
             "text_model.embeddings.position_embedding.weight"),
        *_encoder_rules(("text_model", "encoder"), "text_model.encoder", config.num_hidden_layers),
        *norm_rules(("text_model", "final_layer_norm"), "text_model.final_layer_norm"),
        *dense_rules(("text_projection",), "text_projection", bias=False),
    ]


def _tower_config(directory: str, tower: str) -> tuple[dict[str, Any], bool]:
    """The tower's transformers config dict, and whether the directory holds a full CLIPModel."""
    spec = _TOWERS[tower]
    raw = read_config(directory)
    model_type = raw.get("model_type")
    if model_type == "clip":
        sub = dict(raw.get(spec["sub_config"]) or {})
        # Old CLIPModel configs carry overrides in `<tower>_config_dict`; transformers applies them on top.
        sub.update(raw.get(spec["sub_config"] + "_dict") or {})
        # A CLIPModel's projections are `projection_dim` wide whatever its sub-configs say.
        sub["projection_dim"] = raw.get("projection_dim", 512)
        return sub, True
    if model_type == spec["model_type"]:
        architectures = raw.get("architectures") or [spec["architecture"]]
        if spec["architecture"] not in architectures:
            raise CheckpointError(
                f"{directory}: config.json architectures {architectures}; expected {spec['architecture']} "
                f"(a model without the projection cannot give the {tower} embeddings) or a full CLIPModel")
        return dict(raw), False
    raise CheckpointError(f"{directory}: config.json model_type={model_type!r}; expected 'clip' (CLIPModel) or "
                          f"{spec['model_type']!r} ({spec['architecture']})")


def _ignored_keys(state_dict: dict[str, np.ndarray], tower: str, full_model: bool) -> list[str]:
    """Keys present but deliberately unused: the position_ids buffers older transformers saved, and, in a
    full CLIPModel, the other tower, its projection and the logit scale."""
    prefix = _TOWERS[tower]["prefix"]
    ignored = [k for k in state_dict if k == f"{prefix}.embeddings.position_ids"]
    if full_model:
        other = _TOWERS["text" if tower == "vision" else "vision"]
        ignored += [k for k in state_dict
                    if k.startswith((other["prefix"] + ".", other["projection"] + ".")) or k == "logit_scale"]
    return ignored


def _load(directory: str | os.PathLike, tower: str, config_cls, model_cls, rules_fn, dtype) -> nnx.Module:
    directory = os.fspath(directory)
    raw_config, full_model = _tower_config(directory, tower)
    try:
        config = config_cls.from_transformers_dict(raw_config)
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from e
    # Built abstract (shapes only): loading makes every parameter concrete, with no random init to pay for.
    model = abstract_module(lambda: model_cls(config, dtype=dtype, rngs=nnx.Rngs(0)))
    state_dict, path = read_state_dict(directory, WEIGHT_FILES)
    load_state_dict(model, state_dict, rules_fn(config), source=path,
                    ignore=_ignored_keys(state_dict, tower, full_model))
    return model


def read_vision_config(directory: str | os.PathLike) -> CLIPVisionConfig:
    """The vision tower's config of a CLIPModel or CLIPVisionModelWithProjection directory (no weights read)."""
    raw_config, _ = _tower_config(os.fspath(directory), "vision")
    return CLIPVisionConfig.from_transformers_dict(raw_config)


def read_text_config(directory: str | os.PathLike) -> CLIPTextConfig:
    """The text tower's config of a CLIPModel or CLIPTextModelWithProjection directory (no weights read)."""
    raw_config, _ = _tower_config(os.fspath(directory), "text")
    return CLIPTextConfig.from_transformers_dict(raw_config)


def load_clip_vision(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> CLIPVisionModel:
    """The vision tower + visual projection of a CLIPModel or CLIPVisionModelWithProjection directory."""
    return _load(directory, "vision", CLIPVisionConfig, CLIPVisionModel, vision_rules, dtype)


def load_clip_text(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> CLIPTextModel:
    """The text tower + text projection of a CLIPModel or CLIPTextModelWithProjection directory."""
    return _load(directory, "text", CLIPTextConfig, CLIPTextModel, text_rules, dtype)


def _export(model: nnx.Module, directory: str | os.PathLike, tower: str, rules: list[Rule]) -> None:
    spec = _TOWERS[tower]
    config = {**model.config.to_transformers_dict(), "model_type": spec["model_type"],
              "architectures": [spec["architecture"]]}
    write_config(directory, config)
    write_safetensors(os.path.join(directory, EXPORT_WEIGHTS), export_state_dict(model, rules))


def export_clip_vision(model: CLIPVisionModel, directory: str | os.PathLike) -> None:
    """Writes a CLIPVisionModelWithProjection directory (config.json + model.safetensors, float32)."""
    _export(model, directory, "vision", vision_rules(model.config))


def export_clip_text(model: CLIPTextModel, directory: str | os.PathLike) -> None:
    """Writes a CLIPTextModelWithProjection directory (config.json + model.safetensors, float32)."""
    _export(model, directory, "text", text_rules(model.config))


def load_clip_tokenizer(directory: str | os.PathLike):
    """transformers' CLIPTokenizer from the files in `directory` (tokenizer.json, or vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    directory = os.fspath(directory)
    if not any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "vocab.json")):
        raise CheckpointError(f"{directory}: no CLIP tokenizer; looked for tokenizer.json, vocab.json + merges.txt")
    return CLIPTokenizer.from_pretrained(directory)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """(N, max_length) int32 token ids: <|startoftext|> text <|endoftext|>, truncated to `max_length` (the EOS
    kept) and right-padded with the tokenizer's pad token, as Stable Diffusion and CLIP feed their text encoder."""
    ids = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="np")["input_ids"]
    return ids.astype(np.int32)
