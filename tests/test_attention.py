"""dot_product_attention on the CPU with its backward over query chunks (more than CPU_QUERY_CHUNK queries): the
same values and gradients as the whole attention at once."""
import jax
import jax.numpy as jnp
import numpy as np

from editdiff.nn import layers


def test_query_chunks_give_the_whole_attentions_values_and_gradients():
    rng = np.random.default_rng(0)
    q_len = 2 * layers.CPU_QUERY_CHUNK
    query = jnp.asarray(rng.standard_normal((2, q_len, 2, 4)), jnp.float32)
    key, value = (jnp.asarray(rng.standard_normal((2, 77, 2, 4)), jnp.float32) for _ in range(2))
    cotangent = jnp.asarray(rng.standard_normal((2, q_len, 2, 4)), jnp.float32)

    def loss(attention, q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out * cotangent), out

    chunked = jax.value_and_grad(lambda *a: loss(layers.dot_product_attention, *a), (0, 1, 2), has_aux=True)
    whole = jax.value_and_grad(lambda *a: loss(lambda q, k, v: layers._xla_attention(q, k, v, False), *a),
                               (0, 1, 2), has_aux=True)
    (_, out), grads = chunked(query, key, value)
    (_, expected), expected_grads = whole(query, key, value)
    assert out.shape == query.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)
