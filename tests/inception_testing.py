"""Shared by the FID / KID tests: a pytorch-fid weights file of random values (the real one is not here)."""
from __future__ import annotations

import numpy as np
import torch
from flax import nnx

from editdiff.interop.name_map import flax_params
from editdiff.tracing import abstract_module
from eval.nets import inception


def write_random_inception_file(path) -> None:
    """A pt_inception-layout file at `path` with random values of the right shapes (the real key set is checked
    in test_eval_inception). Abstract construction: no random initialiser runs (they dominate an eager build)."""
    rng = np.random.default_rng(0)
    model = abstract_module(lambda: inception.FIDInceptionV3(rngs=nnx.Rngs(0)))
    params = flax_params(model)
    state = {}
    for rule in inception.inception_rules(model):
        key, value = rule.torch_key, rule.layout.to_torch(np.zeros(params[rule.flax_path].get_value().shape))
        fan_in = np.prod(value.shape[1:]) if value.ndim == 4 else 1
        if key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        else:
            state[key] = rng.normal(0, 1 / np.sqrt(fan_in) if value.ndim == 4 else 0.1, value.shape)
    torch.save({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}, path)
