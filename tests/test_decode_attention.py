"""The decoding cache's pure functions (ops/decode_attention.py) against NumPy
indexing and float64 loops; test_decoding.py checks them in use, cached
decoding against the parallel pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simmim_jax.ops import decode_attention
from simmim_jax.ops import segment_states
from tests import reference


def _normal(rng, shape, dtype=jnp.float32):
  return jnp.asarray(rng.normal(size=shape), dtype)


@pytest.mark.parametrize('use_where', [False, True])
def test_write_slot_sets_one_slot_per_row(rng, use_where):
  buffer = _normal(rng, (4, 6, 2, 3))
  value = _normal(rng, (4, 2, 3))
  slot = jnp.asarray([0, 5, 2, 2])
  where = jnp.asarray([True, True, False, True]) if use_where else None
  want = np.array(buffer)
  for b in range(4):
    if where is None or where[b]:
      want[b, int(slot[b])] = np.asarray(value)[b]
  got = jax.jit(decode_attention.write_slot)(buffer, value, slot, where)
  np.testing.assert_array_equal(got, want)


def test_write_slot_casts_and_drops_out_of_range_slots(rng):
  buffer = _normal(rng, (3, 4, 5), jnp.bfloat16)
  value = _normal(rng, (3, 5))
  got = decode_attention.write_slot(buffer, value, jnp.asarray([1, 4, 3]))
  assert got.dtype == jnp.bfloat16
  want = np.array(buffer)
  want[0, 1] = np.asarray(value[0].astype(jnp.bfloat16))
  want[2, 3] = np.asarray(value[2].astype(jnp.bfloat16))
  np.testing.assert_array_equal(got, want)  # row 1: slot 4 of 4, dropped


def test_read_window_slices_each_row_and_reads_zeros_past_the_end(rng):
  x = _normal(rng, (4, 10, 3))
  start = jnp.asarray([0, 3, 8, 10])
  padded = np.concatenate([np.asarray(x), np.zeros((4, 4, 3), np.float32)], 1)
  want = np.stack([padded[b, int(s):int(s) + 4] for b, s in enumerate(start)])
  got = jax.jit(decode_attention.read_window, static_argnums=2)(x, start, 4)
  assert got.shape == (4, 4, 3)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[3], 0.0)


def _softmax_over_allowed(q, keys, values, allowed):
  """float64 loop: per row and head, softmax(q.k_j / sqrt(head_dim)) over
  the allowed slots j, times v_j; zeros where no slot is allowed."""
  q, keys, values = (np.asarray(x, np.float64) for x in (q, keys, values))
  batch, slots, heads, head_dim = keys.shape
  out = np.zeros((batch, heads, head_dim))
  for b in range(batch):
    read = [j for j in range(slots) if allowed[b, j]]
    for h in range(heads):
      if read:
        scores = np.asarray([q[b, h] @ keys[b, j, h] for j in read])
        weights = np.exp(scores / np.sqrt(head_dim)
                         - np.max(scores / np.sqrt(head_dim)))
        out[b, h] = (weights / weights.sum()) @ values[b, read, h]
  return out


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_cached_attention_is_a_softmax_over_the_allowed_slots(rng, dtype):
  batch, slots, heads, head_dim = 4, 7, 2, 8
  allowed = rng.random((batch, slots)) < 0.6
  allowed[0], allowed[1] = True, False  # every slot, none
  with jax.enable_x64(dtype == np.float64):
    q = _normal(rng, (batch, heads, head_dim), dtype)
    keys, values = (_normal(rng, (batch, slots, heads, head_dim), dtype)
                    for _ in range(2))
    got = jax.jit(decode_attention.cached_attention)(
        q, keys, values, jnp.asarray(allowed))
    assert got.dtype == dtype and got.shape == (batch, heads, head_dim)
  want = _softmax_over_allowed(q, keys, values, allowed)
  tol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  np.testing.assert_array_equal(got[1], 0.0)  # a row without slots
  # The cross_attention loop of tests/reference.py agrees.
  np.testing.assert_allclose(
      want, reference.cross_attention(np.asarray(q)[:, None], keys, values,
                                      allowed)[:, 0], rtol=1e-12, atol=1e-12)


def test_cached_attention_keeps_bfloat16(rng):
  q = _normal(rng, (2, 2, 8), jnp.bfloat16)
  keys, values = (_normal(rng, (2, 5, 2, 8), jnp.bfloat16) for _ in range(2))
  allowed = jnp.arange(5)[None] < jnp.asarray([[3], [5]])
  got = decode_attention.cached_attention(q, keys, values, allowed)
  assert got.dtype == jnp.bfloat16
  want = reference.cross_attention(q[:, None], keys, values, allowed)[:, 0]
  np.testing.assert_allclose(np.float32(got), want, rtol=2e-2, atol=2e-2)


def test_state_query_attends_to_the_finished_segments_only(rng):
  batch, slots, dim, key_dim = 4, 5, 6, 3
  state = _normal(rng, (batch, dim))
  state_keys = _normal(rng, (batch, slots, key_dim))
  state_values = _normal(rng, (batch, slots, dim))
  w_q = _normal(rng, (dim, key_dim))
  num_finished = jnp.asarray([0, 1, 3, 5])
  want = reference.state_query(state, state_keys, state_values, w_q,
                               num_finished)
  got = jax.jit(decode_attention.state_query)(state, state_keys, state_values,
                                              w_q, num_finished)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[0], state[0])  # no earlier segment
  # Slots past num_finished are never read, whatever they hold.
  junk = jnp.where((jnp.arange(slots) < num_finished[:, None])[..., None],
                   state_keys, 1e4)
  np.testing.assert_array_equal(
      decode_attention.state_query(state, junk, state_values, w_q,
                                   num_finished), got)


def test_state_query_is_the_causal_segment_state_attention(rng):
  """Segment i's state with the cached keys and values of segments < i gives
  row i of the parallel causal segment_state_attention."""
  batch, num_segments, dim, key_dim = 2, 5, 6, 3
  states = _normal(rng, (batch, num_segments, dim))
  w_q, w_k = (_normal(rng, (dim, key_dim)) for _ in range(2))
  w_v = _normal(rng, (dim, dim))
  want = reference.segment_state_attention(states, w_q, w_k, w_v,
                                           causal=True)
  parallel = segment_states.segment_state_attention(states, w_q, w_k, w_v,
                                                    causal=True)
  np.testing.assert_allclose(parallel, want, rtol=1e-5, atol=1e-5)
  keys, values = states @ w_k, states @ w_v
  for i in range(num_segments):
    got = decode_attention.state_query(
        states[:, i], keys, values, w_q, jnp.full((batch,), i))
    np.testing.assert_allclose(got, want[:, i], rtol=1e-5, atol=1e-5)
