"""Attention templates vs float64 loops; the template cache and its cost.

Learning the library (VQ, EMA k-means, re-seeding) is in
test_template_learning.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.cost import compiled_cost
from tests import reference


def _normal(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _inputs(rng, batch, length, heads=3, head_dim=4, num_templates=5,
            dtype=np.float32):
  """templates, q, k, v."""
  return (_normal(rng, (heads, num_templates, head_dim), dtype),
          *(_normal(rng, (batch, length, heads, head_dim), dtype)
            for _ in range(3)))


def _ragged_mask(rng, batch, length):
  """Suffix padding of random lengths, plus random holes."""
  lengths = rng.integers(1, length + 1, size=batch)
  holes = rng.random((batch, length)) < 0.2
  return jnp.asarray((np.arange(length)[None] < lengths[:, None]) & ~holes)


def _assignments(rng, batch, length, heads, num_templates):
  return jnp.asarray(rng.integers(0, num_templates, (batch, length, heads)),
                     jnp.int32)


def test_assign_templates_matches_reference(rng):
  templates, q, _, _ = _inputs(rng, 2, 23, num_templates=7)
  got = simmim_jax.assign_templates(q, templates)
  assert got.shape == (2, 23, 3) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, reference.assign_templates(q, templates))


def test_assign_templates_ties_go_to_lowest_index(rng):
  templates = np.asarray(rng.normal(size=(2, 4, 3)), np.float32)
  templates[:, 3] = templates[:, 1]  # exact duplicates
  templates[1, 0], templates[1, 2] = [1.0, 0, 0], [-1.0, 0, 0]
  q = np.zeros((1, 2, 2, 3), np.float32)
  q[0, 0] = templates[:, 1]  # equal to templates 1 and 3
  # Query 1 of head 1 is the origin, equidistant from templates 0 and 2 (and
  # nearer them than the random ones, scaled away).
  templates[1, 1] = templates[1, 3] = [5.0, 5.0, 5.0]
  q[0, 0, 1] = templates[1, 1]
  got = simmim_jax.assign_templates(jnp.asarray(q), jnp.asarray(templates))
  np.testing.assert_array_equal(got[0, 0], [1, 1])
  assert got[0, 1, 1] == 0
  np.testing.assert_array_equal(got, reference.assign_templates(q, templates))


@pytest.mark.parametrize('length', [1, 17, 40])
@pytest.mark.parametrize('use_mask', [False, True])
def test_template_attention_matches_reference(rng, length, use_mask):
  templates, _, k, v = _inputs(rng, 3, length)
  mask = _ragged_mask(rng, 3, length) if use_mask else None
  assignments = _assignments(rng, 3, length, 3, 5)
  got = simmim_jax.template_attention(templates, assignments, k, v, mask=mask)
  assert got.shape == k.shape and got.dtype == k.dtype
  want = reference.template_attention(templates, assignments, k, v, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length,segment_len', [
    (32, 8), (37, 8), (5, 8), (16, 1), (23, 23), (50, 7)])
@pytest.mark.parametrize('use_mask', [False, True])
def test_segment_template_attention_matches_reference(rng, length, segment_len,
                                                      use_mask):
  templates, q, k, v = _inputs(rng, 2, length)
  mask = _ragged_mask(rng, 2, length) if use_mask else None
  assignments = simmim_jax.assign_templates(q, templates)
  got = simmim_jax.segment_template_attention(templates, assignments, k, v,
                                              segment_len, mask=mask)
  assert got.shape == k.shape and got.dtype == k.dtype
  want = reference.segment_template_attention(templates, assignments, k, v,
                                              segment_len, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  outputs = simmim_jax.segment_template_outputs(templates, k, v, segment_len,
                                                mask=mask)
  assert outputs.shape == (2, -(-length // segment_len), 3, 5, 4)


def test_float64_inputs_keep_float64_precision(rng):
  with jax.enable_x64(True):
    templates, q, k, v = _inputs(rng, 2, 29, dtype=np.float64)
    mask = _ragged_mask(rng, 2, 29)
    assignments = simmim_jax.assign_templates(q, templates)
    np.testing.assert_array_equal(assignments,
                                  reference.assign_templates(q, templates))
    got = simmim_jax.template_attention(templates, assignments, k, v,
                                        mask=mask)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(
        got, reference.template_attention(templates, assignments, k, v, mask),
        rtol=1e-12, atol=1e-12)
    got = simmim_jax.segment_template_attention(templates, assignments, k, v,
                                                8, mask=mask)
    np.testing.assert_allclose(
        got, reference.segment_template_attention(templates, assignments, k, v,
                                                  8, mask),
        rtol=1e-12, atol=1e-12)


def test_bfloat16_keys_give_bfloat16_outputs(rng):
  templates, q, k, v = _inputs(rng, 2, 21, dtype=jnp.bfloat16)
  assignments = simmim_jax.assign_templates(q, templates)
  got = simmim_jax.segment_template_attention(templates, assignments, k, v, 8)
  assert got.dtype == jnp.bfloat16
  want = reference.segment_template_attention(
      np.float32(templates), assignments, np.float32(k), np.float32(v), 8)
  np.testing.assert_allclose(np.float32(got), want, rtol=3e-2, atol=3e-2)


def _queries_as_templates(q):
  """Batch 1: template t of head h is query t, and query t uses it."""
  templates = jnp.swapaxes(q[0], 0, 1)  # [heads, length, head_dim]
  length, heads = q.shape[1:3]
  assignments = jnp.broadcast_to(jnp.arange(length)[None, :, None],
                                 (1, length, heads))
  return templates, assignments


def test_one_template_per_query_is_full_attention(rng):
  _, q, k, v = _inputs(rng, 1, 19)
  mask = _ragged_mask(rng, 1, 19)
  templates, assignments = _queries_as_templates(q)
  got = simmim_jax.template_attention(templates, assignments, k, v, mask=mask)
  np.testing.assert_allclose(
      got, simmim_jax.full_attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      got, reference.segment_attention(q, k, v, 19, mask), rtol=1e-5,
      atol=1e-5)


@pytest.mark.parametrize('length,segment_len', [(24, 8), (29, 8), (10, 3)])
def test_one_template_per_query_is_segment_attention(rng, length, segment_len):
  _, q, k, v = _inputs(rng, 1, length)
  mask = _ragged_mask(rng, 1, length)
  templates, assignments = _queries_as_templates(q)
  got = simmim_jax.segment_template_attention(templates, assignments, k, v,
                                              segment_len, mask=mask)
  np.testing.assert_allclose(
      got, simmim_jax.segment_attention(q, k, v, segment_len, mask=mask),
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('length,segment_len', [
    (1, None), (23, None), (37, 8), (16, 16), (10, 3)])
@pytest.mark.parametrize('use_mask', [False, True])
def test_causal_template_attention_matches_reference(rng, length, segment_len,
                                                     use_mask):
  templates, q, k, v = _inputs(rng, 2, length)
  # Large scores: the running max must keep the prefix softmax stable.
  templates = templates * 30.0
  mask = _ragged_mask(rng, 2, length) if use_mask else None
  assignments = simmim_jax.assign_templates(q, templates)
  got = simmim_jax.causal_template_attention(
      templates, assignments, k, v, mask=mask, segment_len=segment_len)
  assert got.shape == k.shape and got.dtype == k.dtype
  want = reference.segment_template_attention(
      templates, assignments, k, v, segment_len or length, mask, causal=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_causal_template_attention_float64_and_causality(rng):
  with jax.enable_x64(True):
    templates, q, k, v = _inputs(rng, 1, 19, dtype=np.float64)
    mask = _ragged_mask(rng, 1, 19)
    assignments = simmim_jax.assign_templates(q, templates)
    attend = jax.jit(lambda k, v: simmim_jax.causal_template_attention(
        templates, assignments, k, v, mask=mask, segment_len=8))
    got = attend(k, v)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(
        got, reference.segment_template_attention(
            templates, assignments, k, v, 8, mask, causal=True),
        rtol=1e-12, atol=1e-12)
    # Output t has zero gradient w.r.t. every key and value after t.
    t = 6  # in the first segment of 8, with later keys in the same segment
    grads = jax.jit(jax.grad(lambda k, v: attend(k, v)[0, t].sum(),
                             argnums=(0, 1)))(k, v)
    for g in grads:
      assert np.all(np.asarray(g)[0, t + 1:] == 0)


def test_one_template_per_query_is_causal_attention(rng):
  _, q, k, v = _inputs(rng, 1, 21)
  mask = _ragged_mask(rng, 1, 21)
  templates, assignments = _queries_as_templates(q)
  # Jitted: one program per call instead of each operation compiled alone.
  for segment_len, want in (
      (None, jax.jit(lambda q, k, v: simmim_jax.full_attention(
          q, k, v, mask=mask, causal=True))(q, k, v)),
      (8, jax.jit(lambda q, k, v: simmim_jax.segment_attention(
          q, k, v, 8, mask=mask, causal=True))(q, k, v))):
    got = jax.jit(lambda a, k, v: simmim_jax.causal_template_attention(
        a, assignments, k, v, mask=mask, segment_len=segment_len))(
            templates, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_template_without_real_keys_outputs_zero(rng):
  templates, _, k, v = _inputs(rng, 2, 12)
  mask = jnp.asarray([[False] * 12, [True] * 4 + [False] * 4 + [True] * 4])
  outputs = simmim_jax.template_outputs(templates, k, v, mask=mask)
  np.testing.assert_array_equal(outputs[0], 0.0)
  assert np.all(np.abs(np.asarray(outputs[1])) > 0)
  segments = simmim_jax.segment_template_outputs(templates, k, v, 4, mask=mask)
  np.testing.assert_array_equal(segments[0], 0.0)
  np.testing.assert_array_equal(segments[1, 1], 0.0)
  grads = jax.grad(lambda t: simmim_jax.segment_template_outputs(
      t, k, v, 4, mask=mask).sum())(templates)
  assert np.all(np.isfinite(grads))


@pytest.mark.parametrize('segment_len', [None, 8])
def test_cache_equals_uncached_attention_exactly(rng, segment_len):
  templates, q, k, v = _inputs(rng, 2, 30)
  mask = _ragged_mask(rng, 2, 30)
  new_q = _normal(rng, q.shape)
  if segment_len is None:
    cache = simmim_jax.template_outputs(templates, k, v, mask=mask)
    uncached = lambda a: simmim_jax.template_attention(  # noqa: E731
        templates, a, k, v, mask=mask)
  else:
    cache = simmim_jax.segment_template_outputs(templates, k, v, segment_len,
                                                mask=mask)
    uncached = lambda a: simmim_jax.segment_template_attention(  # noqa: E731
        templates, a, k, v, segment_len, mask=mask)
  for queries in (q, new_q):
    cached = simmim_jax.query_template_cache(cache, queries, templates,
                                             segment_len=segment_len)
    want = uncached(simmim_jax.assign_templates(queries, templates))
    np.testing.assert_array_equal(cached, want)


def test_cache_of_a_longer_context_serves_its_prefix(rng):
  templates, q, k, v = _inputs(rng, 1, 32)
  cache = simmim_jax.segment_template_outputs(templates, k, v, 8)
  got = simmim_jax.query_template_cache(cache, q[:, :13], templates,
                                        segment_len=8)
  full = simmim_jax.query_template_cache(cache, q, templates, segment_len=8)
  np.testing.assert_array_equal(got, full[:, :13])
  with pytest.raises(ValueError, match='cache must have shape'):
    simmim_jax.query_template_cache(cache[:, :2], q, templates, segment_len=8)


def test_jit_with_traced_assignments(rng):
  templates, q, k, v = _inputs(rng, 2, 26)
  mask = _ragged_mask(rng, 2, 26)

  def fn(templates, q, k, v, mask):
    assignments = simmim_jax.assign_templates(q, templates)
    return simmim_jax.segment_template_attention(templates, assignments, k, v,
                                                 8, mask=mask)

  want = reference.segment_template_attention(
      templates, reference.assign_templates(q, templates), k, v, 8, mask)
  np.testing.assert_allclose(jax.jit(fn)(templates, q, k, v, mask), want,
                             rtol=1e-5, atol=1e-5)


LENGTHS = (2048, 4096, 8192, 16384)


def _flops(fn, length, heads=2, head_dim=16):
  spec = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
  return compiled_cost(fn, spec, spec, spec)['flops']


def _template_fn(num_templates=16, heads=2, head_dim=16):
  templates = jnp.ones((heads, num_templates, head_dim))

  def fn(q, k, v):
    assignments = simmim_jax.assign_templates(q, templates)
    return simmim_jax.template_attention(templates, assignments, k, v)
  return fn


def test_template_attention_flops_grow_linearly():
  flops = [_flops(_template_fn(), n) for n in LENGTHS]
  ratios = np.array(flops[1:]) / np.array(flops[:-1])
  assert np.all(ratios <= 2.2), (flops, ratios)
  full = _flops(simmim_jax.full_attention, 2048)
  # K = 16 scores per query instead of 2048.
  assert full / flops[0] >= 8, (full, flops[0])


def test_template_attention_never_builds_a_length_by_length_array(rng):
  length = 512
  templates, q, k, v = _inputs(rng, 1, length, heads=2, num_templates=8)
  jaxpr = jax.make_jaxpr(lambda q, k, v: simmim_jax.template_attention(
      templates, simmim_jax.assign_templates(q, templates), k, v,
      mask=jnp.ones((1, length), bool)))(q, k, v)
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert all(s.count(length) <= 1 for s in shapes), shapes


def test_bad_inputs():
  templates = jnp.zeros((2, 3, 4))
  k = v = q = jnp.zeros((1, 8, 2, 4))
  a = jnp.zeros((1, 8, 2), jnp.int32)
  ta = simmim_jax.template_attention
  with pytest.raises(ValueError, match='templates must have rank 3'):
    ta(templates[0], a, k, v)
  with pytest.raises(ValueError, match='at least one template'):
    ta(jnp.zeros((2, 0, 4)), a, k, v)
  with pytest.raises(ValueError, match=r'k has \(heads, head_dim\)'):
    ta(jnp.zeros((3, 3, 4)), a, k, v)
  with pytest.raises(ValueError, match=r'queries has \(heads, head_dim\)'):
    simmim_jax.assign_templates(q, jnp.zeros((2, 3, 5)))
  with pytest.raises(ValueError, match='v has shape'):
    ta(templates, a, k, v[:, :7])
  with pytest.raises(ValueError, match='k must have rank 4'):
    ta(templates, a, k[0], v[0])
  with pytest.raises(ValueError, match=r'mask must have shape \(1, 8\)'):
    ta(templates, a, k, v, mask=jnp.ones((1, 9), bool))
  with pytest.raises(ValueError, match='assignments must have shape'):
    ta(templates, a[:, :7], k, v)
  with pytest.raises(ValueError, match='assignments must be integer'):
    ta(templates, a.astype(jnp.float32), k, v)
  with pytest.raises(ValueError, match=r'assignments contain 3, outside'):
    ta(templates, a.at[0, 5, 1].set(3), k, v)
  for segment_len in (0, -2, 2.5):
    with pytest.raises(ValueError, match='segment_len'):
      simmim_jax.segment_template_attention(templates, a, k, v, segment_len)
    with pytest.raises(ValueError, match='segment_len'):
      simmim_jax.segment_template_outputs(templates, k, v, segment_len)
  with pytest.raises(ValueError, match='cache must have shape'):
    simmim_jax.query_template_cache(jnp.zeros((1, 2, 4, 4)), q, templates)
