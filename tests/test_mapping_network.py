"""The mapping network f_theta: shapes, depth ablation, and the exported PyTorch module's parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from editdiff.heads.mapping import MappingNetwork
from editdiff.interop.mapping_network import export_mapping_network, load_torch_mapping_network


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_exported_torch_module_reproduces_flax(tmp_path, depth):
    model = MappingNetwork(9, 24, depth=depth, hidden_dim=16, num_tokens=3, rngs=nnx.Rngs(depth))
    assert len(model.layers) == depth
    c = jax.random.uniform(jax.random.key(0), (5, 9))
    context = model(c)
    assert context.shape == (5, 3, 24)

    export_mapping_network(model, str(tmp_path))
    torch_model = load_torch_mapping_network(str(tmp_path))
    with torch.no_grad():
        torch_context = torch_model(torch.from_numpy(np.array(c))).numpy()
    err = np.abs(torch_context - np.asarray(context)).max()
    print(f"mapping network depth {depth}: max abs error flax vs exported torch = {err:.2e}")
    assert err < 1e-5


def test_rejects_zero_depth():
    with pytest.raises(ValueError, match="depth"):
        MappingNetwork(9, 8, depth=0, rngs=nnx.Rngs(0))


def test_tokens_depend_on_edit_vector():
    model = MappingNetwork(9, 8, rngs=nnx.Rngs(0))
    a = model(jnp.zeros((1, 9)))
    b = model(jnp.ones((1, 9)))
    assert not np.allclose(a, b)
