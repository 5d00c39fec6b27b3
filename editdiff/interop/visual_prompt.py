"""The visual-prompting model (editdiff/methods/visual_prompt.py) for PyTorch: its parts in diffusers' layouts,
and the check that diffusers' ControlNet + U-Net reproduce the JAX prediction.

    controlnet/           a diffusers ControlNetModel (config.json + diffusion_pytorch_model.safetensors)
    query_hint_encoder/   separate layout only: diffusers' ControlNetConditioningEmbedding for the query
                          (config.json: its constructor's arguments; weights under its own names). Its output is
                          added to the ControlNet's hint embedding: in PyTorch, a forward hook on
                          `controlnet.controlnet_cond_embedding` returning `output + query_encoder(query)`.
    context_projection/   CLIP context only: a torch Linear `projection` (weight (D, P), bias (D,)) from CLIP
                          image embeddings to the four context tokens
                          [e(x_r), e(y_r), e(x_q), e(x_q) + e(y_r) - e(x_r)].

Pixels go in as NCHW in [-1, 1]; the grid hint is [[x_r, y_r], [x_q, HINT_FILL]] (LAYOUT_NOTES).
"""
from __future__ import annotations

import json
import os

import numpy as np

from editdiff.interop.diffusers_unet import export_controlnet, hint_embedding_rules
from editdiff.interop.name_map import dense_rules, export_state_dict
from editdiff.interop.torch_io import write_config, write_safetensors

LAYOUT_NOTES = {
    "grid": "hint (2c, 2c): [[reference_input, reference_output], [query, hint_fill]]; the U-Net denoises the "
            "latent of [[reference_input, reference_output], [query, answer]], the three known cells blended in "
            "at every step; the answer is the decoded grid's bottom-right cell",
    "separate": "controlnet hint (c, c, 6): concat(reference_input, reference_output) on channels; "
                "query_hint_encoder(query (c, c, 3)) added to its embedding; the U-Net denoises the answer's latent",
}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def export_visual_prompt_parts(model, directory: str) -> list[str]:
    """Writes the module docstring's directories of `model` (a VisualPromptModel) under `directory`; returns them."""
    written = [os.path.join(directory, "controlnet")]
    export_controlnet(model.controlnet, written[0])
    if model.query_hint_encoder is not None:
        encoder = model.query_hint_encoder
        path = os.path.join(directory, "query_hint_encoder")
        write_config(path, {"conditioning_embedding_channels": encoder.conv_out.out_features,
                            "conditioning_channels": encoder.conv_in.in_features,
                            "block_out_channels": [encoder.conv_in.out_features,
                                                   *(b.out_features for b in encoder.blocks[1::2])]})
        write_safetensors(os.path.join(path, WEIGHTS_NAME),
                          export_state_dict(encoder, hint_embedding_rules((), "", encoder)))
        written.append(path)
    if model.context_projection is not None:
        path = os.path.join(directory, "context_projection")
        projection = model.context_projection
        write_config(path, {"in_features": projection.in_features, "out_features": projection.out_features})
        state = export_state_dict(projection, dense_rules((), "projection"))
        write_safetensors(os.path.join(path, WEIGHTS_NAME), state)
        written.append(path)
    return written


def load_torch_query_hint_encoder(directory: str):
    """diffusers' ControlNetConditioningEmbedding from a `query_hint_encoder/` directory, in eval mode."""
    import torch
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
    from safetensors.numpy import load_file

    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    encoder = ControlNetConditioningEmbedding(config["conditioning_embedding_channels"],
                                              config["conditioning_channels"], tuple(config["block_out_channels"]))
    state = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(directory, WEIGHTS_NAME)).items()}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def torch_prediction(unet, controlnet, z_t, t, context, hint, query_encoder=None, query_hint=None):
    """diffusers' U-Net with the ControlNet's residuals (NCHW torch tensors): the exported model's prediction."""
    handle = None
    if query_encoder is not None:
        handle = controlnet.controlnet_cond_embedding.register_forward_hook(
            lambda module, inputs, output: output + query_encoder(query_hint))
    try:
        down, mid = controlnet(z_t, t, context, hint, return_dict=False)
    finally:
        if handle is not None:
            handle.remove()
    return unet(z_t, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


def exported_prediction_error(model, directory: str, *, unet_directory: str, cell_size: int, factor: int,
                              layout: str) -> float | None:
    """Max abs difference between `model.prediction` (JAX) and `torch_prediction` from the export under
    `directory` and the base's diffusers U-Net, on a fixed input: batch 2, random cells of `cell_size`, their
    hint, a random latent of the layout's size, t = (10, 900), the model's context for the cells. None when
    torch or diffusers is not installed."""
    try:
        import diffusers
        import torch
    except ImportError:
        return None
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from editdiff.methods.visual_prompt import CELLS, hints, with_hints

    keys = jax.random.split(jax.random.key(0), 4)
    cells = {name: np.asarray(jax.random.uniform(k, (2, cell_size, cell_size, 3), jnp.float32, -1.0, 1.0))
             for name, k in zip(CELLS, keys)}
    prompts = {k: jnp.asarray(v) for k, v in with_hints(cells).items()}
    side = (2 if layout == "grid" else 1) * cell_size // factor
    z_t = jax.random.normal(keys[3], (2, side, side, model.unet.config.in_channels), jnp.float32)
    t = jnp.array([10, 900], jnp.int32)

    def predict(m, prompts, z_t, t):
        context = m.context(*(prompts[name] for name in CELLS))
        return m.prediction(z_t, t, context, *hints(layout, prompts)), context

    expected, context = (np.asarray(x) for x in nnx.jit(predict)(model, prompts, z_t, t))
    hint, query_hint = (None if x is None else np.asarray(x) for x in hints(layout, prompts))
    nchw = lambda x: None if x is None else torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())
    query_encoder = (load_torch_query_hint_encoder(os.path.join(directory, "query_hint_encoder"))
                     if layout == "separate" else None)
    with torch.no_grad():
        got = torch_prediction(diffusers.UNet2DConditionModel.from_pretrained(unet_directory).eval(),
                               diffusers.ControlNetModel.from_pretrained(os.path.join(directory, "controlnet")).eval(),
                               nchw(z_t), torch.from_numpy(np.array(t)).long(), torch.from_numpy(np.array(context)),
                               nchw(hint), query_encoder, nchw(query_hint))
    return float(np.abs(got.permute(0, 2, 3, 1).numpy() - expected).max())
