"""Export of the multitask mapping network f_theta to safetensors, and the PyTorch module that loads it.

The exported directory holds `config.json` (edit_dim, context_dim, depth, hidden_dim, num_tokens) and
`model.safetensors` with keys `layers.{i}.weight` (out, in) / `layers.{i}.bias`, the layout of a
`torch.nn.Linear` stack. `TorchMappingNetwork` below is that stack; it reproduces `MappingNetwork` exactly:

    from editdiff.interop.mapping_network import load_torch_mapping_network
    f_theta = load_torch_mapping_network("export/mapping")   # a torch.nn.Module
    context = f_theta(edit_vector)                          # (B, 9) -> (B, num_tokens, context_dim)

and `context` goes to diffusers' `UNet2DConditionModel(..., encoder_hidden_states=context)`.
"""
from __future__ import annotations

import os

from editdiff.heads.mapping import MappingNetwork
from editdiff.interop.name_map import Layout, Rule, export_state_dict
from editdiff.interop.torch_io import read_config, read_state_dict, write_config, write_safetensors

WEIGHTS_NAME = "model.safetensors"


def _rules(model: MappingNetwork) -> list[Rule]:
    rules = []
    for i in range(len(model.layers)):
        rules.append(Rule(("layers", i, "kernel"), f"layers.{i}.weight", Layout.LINEAR))
        rules.append(Rule(("layers", i, "bias"), f"layers.{i}.bias"))
    return rules


def mapping_config(model: MappingNetwork) -> dict:
    """The constructor arguments of `model`, as written to config.json."""
    return {"edit_dim": model.edit_dim, "context_dim": model.context_dim, "depth": model.depth,
            "hidden_dim": model.hidden_dim, "num_tokens": model.num_tokens}


def export_mapping_network(model: MappingNetwork, directory: str) -> None:
    """Writes `config.json` + `model.safetensors` for `TorchMappingNetwork`."""
    write_config(directory, mapping_config(model))
    write_safetensors(os.path.join(directory, WEIGHTS_NAME), export_state_dict(model, _rules(model)))


def load_torch_mapping_network(directory: str):
    """Builds `TorchMappingNetwork` from an exported directory (strict: every key used, none missing)."""
    import torch

    config = read_config(directory)
    module = _torch_mapping_class()(**config)
    state, _ = read_state_dict(directory, [WEIGHTS_NAME])
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return module.eval()


def _torch_mapping_class():
    """Defined lazily so that importing this module never imports torch."""
    import torch

    class TorchMappingNetwork(torch.nn.Module):
        """f_theta in PyTorch: Linear layers with SiLU between them, output split into tokens."""

        def __init__(self, edit_dim, context_dim, depth, hidden_dim, num_tokens):
            super().__init__()
            widths = [edit_dim] + [hidden_dim] * (depth - 1) + [num_tokens * context_dim]
            self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.num_tokens, self.context_dim = num_tokens, context_dim

        def forward(self, edit_vector):
            h = edit_vector
            for i, layer in enumerate(self.layers):
                h = layer(torch.nn.functional.silu(h) if i > 0 else h)
            return h.reshape(h.shape[0], self.num_tokens, self.context_dim)

    return TorchMappingNetwork
