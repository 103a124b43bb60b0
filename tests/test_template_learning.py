"""Learning the template library (ops/template_learning.py): straight-through
routing and quantisation, VQ losses, EMA k-means and re-seeding, against
float64 NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.ops import template_learning
from tests import reference
from tests.test_templates import _assignments
from tests.test_templates import _inputs
from tests.test_templates import _normal
from tests.test_templates import _ragged_mask


def test_quantize_is_straight_through(rng):
  templates, q, _, _ = _inputs(rng, 2, 9)
  assignments, quantized = simmim_jax.quantize(q, templates)
  np.testing.assert_array_equal(assignments,
                                simmim_jax.assign_templates(q, templates))
  chosen = np.asarray(templates)[np.arange(3)[None, None], assignments]
  np.testing.assert_allclose(quantized, chosen, rtol=1e-6, atol=1e-6)
  cotangent = _normal(rng, q.shape)
  loss = lambda q, t: jnp.sum(simmim_jax.quantize(q, t)[1]  # noqa: E731
                              * cotangent)
  grad_q, grad_t = jax.grad(loss, argnums=(0, 1))(q, templates)
  np.testing.assert_array_equal(grad_q, cotangent)
  np.testing.assert_array_equal(grad_t, 0.0)


def _soft_routing_reference(q, templates, assignments, cotangent,
                            temperature):
  """(value, d sum(routing * cotangent) / d q, ... / d templates), float64
  loops: the value is one_hot(assignments), the gradient that of
  softmax_k(-||q - a_k||^2 / temperature)."""
  q, a, c = (np.asarray(x, np.float64) for x in (q, templates, cotangent))
  batch, length, heads, _ = q.shape
  num_templates = a.shape[1]
  value = np.zeros((batch, length, heads, num_templates))
  grad_q, grad_a = np.zeros_like(q), np.zeros_like(a)
  for b in range(batch):
    for t in range(length):
      for h in range(heads):
        value[b, t, h, int(assignments[b, t, h])] = 1.0
        diffs = [q[b, t, h] - a[h, k] for k in range(num_templates)]
        logits = np.asarray([-d @ d / temperature for d in diffs])
        soft = np.exp(logits - logits.max())
        soft /= soft.sum()
        mean = soft @ c[b, t, h]
        for k in range(num_templates):
          d_logit = soft[k] * (c[b, t, h, k] - mean)
          grad_q[b, t, h] += d_logit * -2 * diffs[k] / temperature
          grad_a[h, k] += d_logit * 2 * diffs[k] / temperature
  return value, grad_q, grad_a


def test_soft_routing_is_one_hot_with_the_softmax_gradient(rng):
  templates, q, _, _ = _inputs(rng, 2, 7)
  assignments = simmim_jax.assign_templates(q, templates)
  cotangent = _normal(rng, (2, 7, 3, 5))
  value, grad_q, grad_t = _soft_routing_reference(
      q, templates, np.asarray(assignments), cotangent, 2.0)

  def loss(q, t):
    routing = template_learning.soft_routing(q, t, assignments,
                                             temperature=2.0)
    return jnp.sum(routing * cotangent), routing

  (_, routing), grads = jax.value_and_grad(loss, argnums=(0, 1),
                                           has_aux=True)(q, templates)
  np.testing.assert_allclose(routing, value, atol=1e-6)
  np.testing.assert_allclose(grads[0], grad_q, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads[1], grad_t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('segment_len', [None, 4])
def test_route_mixes_template_outputs_per_query(rng, segment_len):
  batch, length, heads, num_templates, dim = 2, 10, 3, 5, 4
  routing = jnp.asarray(rng.random((batch, length, heads, num_templates)),
                        jnp.float32)
  if segment_len is None:
    outputs = _normal(rng, (batch, heads, num_templates, dim))
    of = lambda b, t: np.asarray(outputs)[b]  # [heads, K, d]
  else:
    num_segments = -(-length // segment_len)
    outputs = _normal(rng, (batch, num_segments, heads, num_templates, dim))
    of = lambda b, t: np.asarray(outputs)[b, t // segment_len]
  want = np.zeros((batch, length, heads, dim))
  for b in range(batch):
    for t in range(length):
      for h in range(heads):
        for k in range(num_templates):
          want[b, t, h] += (np.float64(routing[b, t, h, k])
                            * of(b, t)[h, k])
  got = template_learning.route(routing, outputs, segment_len)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # One-hot routing gathers each query's own template output.
  assignments = _assignments(rng, batch, length, heads, num_templates)
  hard = template_learning.route(
      jax.nn.one_hot(assignments, num_templates), outputs, segment_len)
  for b in range(batch):
    for t in range(length):
      for h in range(heads):
        np.testing.assert_array_equal(
            hard[b, t, h], of(b, t)[h, int(assignments[b, t, h])])


def test_route_per_position_mixes_each_positions_outputs(rng):
  routing = jnp.asarray(rng.random((2, 6, 3, 5)), jnp.float32)
  outputs = _normal(rng, (2, 6, 3, 5, 4))
  want = np.zeros((2, 6, 3, 4))
  for b, t, h, k in np.ndindex(2, 6, 3, 5):
    want[b, t, h] += (np.float64(routing[b, t, h, k])
                      * np.float64(outputs[b, t, h, k]))
  np.testing.assert_allclose(
      template_learning.route_per_position(routing, outputs), want,
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('use_mask', [False, True])
def test_template_usage_counts_real_queries(rng, use_mask):
  assignments = _assignments(rng, 2, 11, 3, 5)
  mask = _ragged_mask(rng, 2, 11) if use_mask else None
  real = np.ones((2, 11), bool) if mask is None else np.asarray(mask)
  want = np.zeros((3, 5))
  for b, t, h in np.ndindex(2, 11, 3):
    if real[b, t]:
      want[h, int(assignments[b, t, h])] += 1
  usage = template_learning.template_usage(assignments, 5, mask=mask)
  assert usage.dtype == jnp.float32
  np.testing.assert_array_equal(usage, want)


def test_vq_losses_values_and_gradients(rng):
  templates, q, _, _ = _inputs(rng, 2, 11)
  mask = _ragged_mask(rng, 2, 11)
  assignments = simmim_jax.assign_templates(q, templates)
  q64, t64, m = np.float64(q), np.float64(templates), np.asarray(mask)
  chosen = t64[np.arange(3)[None, None], assignments]  # [2, 11, 3, 4]
  count = m.sum() * 3
  want = np.sum(m[..., None] * np.sum((q64 - chosen) ** 2, -1)) / count
  losses = simmim_jax.vq_losses(q, templates, assignments, mask=mask)
  np.testing.assert_allclose(losses['codebook'], want, rtol=1e-6)
  np.testing.assert_allclose(losses['commitment'], want, rtol=1e-6)

  def grads(name):
    return jax.grad(lambda q, t: simmim_jax.vq_losses(
        q, t, assignments, mask=mask)[name], argnums=(0, 1))(q, templates)

  grad_q, grad_t = grads('codebook')
  np.testing.assert_array_equal(grad_q, 0.0)
  want_t = np.zeros_like(t64)
  for b, t, h in zip(*np.nonzero(m[..., None] & np.ones((1, 1, 3), bool))):
    want_t[h, assignments[b, t, h]] += 2 * (chosen[b, t, h] - q64[b, t, h])
  np.testing.assert_allclose(grad_t, want_t / count, rtol=1e-5, atol=1e-6)

  grad_q, grad_t = grads('commitment')
  np.testing.assert_array_equal(grad_t, 0.0)
  np.testing.assert_allclose(grad_q, 2 * m[..., None, None] * (q64 - chosen)
                             / count, rtol=1e-5, atol=1e-6)


def test_vq_losses_without_a_real_position_are_zero(rng):
  templates, q, _, _ = _inputs(rng, 2, 5)
  assignments = simmim_jax.assign_templates(q, templates)
  losses = simmim_jax.vq_losses(q, templates, assignments,
                                mask=jnp.zeros((2, 5), bool))
  assert float(losses['codebook']) == 0.0
  assert float(losses['commitment']) == 0.0


@pytest.mark.parametrize('use_mask', [False, True])
def test_ema_kmeans_update_matches_reference(rng, use_mask):
  _, q, _, _ = _inputs(rng, 2, 15)
  mask = _ragged_mask(rng, 2, 15) if use_mask else None
  assignments = _assignments(rng, 2, 15, 3, 5)
  assignments = assignments.at[:, :, 0].set(jnp.minimum(assignments[:, :, 0],
                                                         3))  # an empty one
  sizes = jnp.asarray(rng.random((3, 5)) * 4, jnp.float32)
  sums = _normal(rng, (3, 5, 4))
  got = simmim_jax.ema_kmeans_update(sizes, sums, q, assignments, decay=0.9,
                                     mask=mask)
  want = reference.ema_kmeans_update(sizes, sums, q, np.asarray(assignments),
                                     0.9, mask)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # A fresh cluster with all its mass from this batch: its template is its
  # queries' mean (up to the smoothing).
  zeros = simmim_jax.ema_kmeans_update(jnp.zeros((3, 5)), jnp.zeros((3, 5, 4)),
                                       q, assignments, decay=0.0)
  c = assignments[0, 0, 0]
  members = np.asarray(q)[:, :, 0][np.asarray(assignments[:, :, 0]) == c]
  np.testing.assert_allclose(zeros[2][0, c], members.mean(0), rtol=1e-4)


def test_reseed_replaces_exactly_the_dead_templates(rng):
  templates, q, _, _ = _inputs(rng, 2, 10, num_templates=6)
  mask = _ragged_mask(rng, 2, 10)
  sizes = jnp.asarray(rng.random((3, 6)) * 2, jnp.float32)
  reseed = jax.jit(lambda t, s, q, key, m: simmim_jax.reseed_dead_templates(
      t, s, q, key, threshold=1.0, mask=m))
  new, replaced = reseed(templates, sizes, q, jax.random.key(0), mask)
  dead = np.asarray(sizes) < 1.0
  assert dead.sum() > 0
  np.testing.assert_array_equal(replaced, dead)
  np.testing.assert_array_equal(np.asarray(new)[~dead],
                                np.asarray(templates)[~dead])
  real_q = np.asarray(q)[np.asarray(mask)]  # [real positions, heads, dim]
  for h, c in zip(*np.nonzero(dead)):
    matches = np.all(real_q[:, h] == np.asarray(new)[h, c], axis=-1)
    assert matches.any(), (h, c)
  for h in range(3):  # distinct while there are enough real queries
    rows = np.asarray(new)[h, dead[h]]
    assert len(np.unique(rows, axis=0)) == len(rows)
  # Fewer real queries than templates: still real queries only.
  one = jnp.zeros((2, 10), bool).at[1, 3].set(True)
  new, replaced = reseed(templates, jnp.zeros((3, 6)), q, jax.random.key(1),
                         one)
  assert np.all(replaced)
  np.testing.assert_array_equal(
      new, jnp.broadcast_to(q[1, 3][:, None], (3, 6, 4)))
  # No real query: nothing to reseed from.
  new, replaced = reseed(templates, jnp.zeros((3, 6)), q, jax.random.key(2),
                         jnp.zeros((2, 10), bool))
  assert not np.any(replaced)
  np.testing.assert_array_equal(new, templates)


def test_bad_inputs():
  templates = jnp.zeros((2, 3, 4))
  q = jnp.zeros((1, 8, 2, 4))
  a = jnp.zeros((1, 8, 2), jnp.int32)
  with pytest.raises(ValueError, match=r'assignments contain -1, outside'):
    simmim_jax.vq_losses(q, templates, a.at[0, 0, 0].set(-1))
  with pytest.raises(ValueError, match='cluster_sizes must have shape'):
    simmim_jax.ema_kmeans_update(jnp.zeros((2, 4)), templates, q, a, decay=0.9)
  with pytest.raises(ValueError, match='decay must be in'):
    simmim_jax.ema_kmeans_update(jnp.zeros((2, 3)), templates, q, a, decay=1.5)
  with pytest.raises(ValueError, match='cluster_sizes must have shape'):
    simmim_jax.reseed_dead_templates(templates, jnp.zeros((3,)), q,
                                     jax.random.key(0), threshold=1.0)
