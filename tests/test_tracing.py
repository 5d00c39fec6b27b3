"""editdiff.tracing: model construction under a trace without the quadratic tracer probes, and nothing else
changed."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from editdiff.tracing import abstract_module, linear_time_probes


def _walks_per_probe(monkeypatch) -> int:
    """How many times one `tracer.sharding` probe inside jit walks the equations traced so far."""
    walks = []
    walk = partial_eval.JaxprStackFrame.find_progenitors
    monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors",
                        lambda self, tracer: walks.append(1) or walk(self, tracer))

    @jax.jit
    def f(x):
        y = jnp.sin(x) * 2
        assert getattr(y, "sharding", None) is None  # what flax NNX's Variable.set_value does
        return y

    f(jnp.ones(len(walks) + 3))  # a new shape each call: traced again
    monkeypatch.undo()
    return len(walks)


def test_probes_skip_the_walk_only_inside_the_block(monkeypatch):
    assert _walks_per_probe(monkeypatch) == 1  # JAX as it is: the walk behind the quadratic trace
    with linear_time_probes():
        assert _walks_per_probe(monkeypatch) == 0
    assert _walks_per_probe(monkeypatch) == 1  # restored
    with pytest.raises(ValueError), linear_time_probes():
        raise ValueError("restored on errors too")
    assert _walks_per_probe(monkeypatch) == 1


def test_abstract_module_is_nnx_eval_shape():
    build = lambda: nnx.Linear(3, 5, rngs=nnx.Rngs(0))  # noqa: E731
    ours, theirs = abstract_module(build), nnx.eval_shape(build)
    leaves = jax.tree.leaves(nnx.state(ours))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(ours)) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(theirs))
