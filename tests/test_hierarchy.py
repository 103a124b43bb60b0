"""hierarchical_aggregate vs a naive recursive Python reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.ops import hierarchy
from tests import reference


def _params(aggregator, dim, num_heads, levels=None, seed=0):
  spec = simmim_jax.aggregator_params_spec(aggregator, dim, num_heads)
  key = jax.random.key(seed)
  params = {}
  for i, (name, (shape, _, init)) in enumerate(sorted(spec.items())):
    if levels is not None:
      shape = (levels, *shape)
    # Random (not the zero/identity init) so every parameter matters.
    params[name] = jax.random.normal(jax.random.fold_in(key, i), shape) * 0.5
  return params


@pytest.mark.parametrize('aggregator', sorted(simmim_jax.AGGREGATORS))
@pytest.mark.parametrize('num_segments', [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize('per_level', [False, True])
def test_matches_recursive_reference(rng, aggregator, num_segments, per_level):
  nodes = jnp.asarray(rng.normal(size=(3, num_segments, 8)), jnp.float32)
  mask = jnp.asarray(rng.random((3, num_segments)) < 0.7)
  levels = hierarchy.num_tree_levels(num_segments)
  params = _params(aggregator, 8, 2, max(levels, 1) if per_level else None)
  for m in (None, mask):
    got = simmim_jax.hierarchical_aggregate(
        nodes, params, aggregator=aggregator, mask=m, per_level=per_level)
    want = reference.hierarchical_aggregate(nodes, params, aggregator, m,
                                            per_level=per_level)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('num_levels', [0, 1, 2, 5])
def test_fewer_levels_average_what_remains(rng, num_levels):
  nodes = jnp.asarray(rng.normal(size=(2, 11, 4)), jnp.float32)
  params = _params('concat', 4, 1, levels=4)
  got = simmim_jax.hierarchical_aggregate(
      nodes, params, aggregator='concat', num_levels=num_levels,
      per_level=True)
  want = reference.hierarchical_aggregate(nodes, params, 'concat',
                                          num_levels=num_levels, per_level=True)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('aggregator', sorted(simmim_jax.AGGREGATORS))
def test_padding_with_masked_segments_changes_nothing(rng, aggregator):
  nodes = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  params = _params(aggregator, 8, 2, levels=4)
  padded = jnp.concatenate([nodes, jnp.asarray(rng.normal(size=(2, 7, 8)),
                                               jnp.float32)], axis=1)
  mask = jnp.arange(12)[None].repeat(2, 0) < 5
  for num_levels in (None, 2):
    plain = simmim_jax.hierarchical_aggregate(
        nodes, params, aggregator=aggregator, num_levels=num_levels,
        per_level=True)
    padded_out = simmim_jax.hierarchical_aggregate(
        padded, params, aggregator=aggregator, mask=mask,
        num_levels=num_levels, per_level=True)
    np.testing.assert_allclose(plain, padded_out, rtol=1e-6, atol=1e-6)


def test_levels_run_under_one_scan():
  nodes = jnp.zeros((1, 100, 4))
  params = _params('weighted_sum', 4, 1, levels=7)
  jaxpr = jax.make_jaxpr(lambda n, p: simmim_jax.hierarchical_aggregate(
      n, p, aggregator='weighted_sum', per_level=True))(nodes, params)
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
  assert len(scans) == 1 and scans[0].params['length'] == 7


def test_gradients_reach_every_level(rng):
  nodes = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
  params = _params('concat', 4, 1, levels=3)
  grads = jax.grad(lambda p: simmim_jax.hierarchical_aggregate(
      nodes, p, aggregator='concat', per_level=True).sum())(params)
  per_level_norm = np.abs(np.asarray(grads['kernel'])).sum(axis=(1, 2))
  assert np.all(per_level_norm > 0)


def test_bad_inputs():
  nodes = jnp.zeros((2, 5, 4))
  with pytest.raises(ValueError, match="unknown aggregator 'max'"):
    simmim_jax.hierarchical_aggregate(nodes, {}, aggregator='max')
  with pytest.raises(ValueError, match="unknown aggregator 'max'"):
    simmim_jax.aggregator_params_spec('max', 4, 1)
  params = _params('concat', 4, 1, levels=2)
  with pytest.raises(ValueError, match='has 2 levels but 3 are needed'):
    simmim_jax.hierarchical_aggregate(nodes, params, aggregator='concat',
                                      per_level=True)
  with pytest.raises(ValueError, match='num_levels'):
    simmim_jax.hierarchical_aggregate(nodes, params, aggregator='concat',
                                      num_levels=-1)
  with pytest.raises(ValueError, match='nodes must have rank 3'):
    simmim_jax.hierarchical_aggregate(nodes[0], params, aggregator='concat')
  with pytest.raises(ValueError, match='mask must have shape'):
    simmim_jax.hierarchical_aggregate(nodes, _params('concat', 4, 1),
                                      aggregator='concat',
                                      mask=jnp.ones((2, 4), bool))
