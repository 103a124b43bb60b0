"""Several states per segment, and tokens reading the states, against the
float64 loops of reference.py; which vectors become states."""

import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.ops import segment_states
from tests import reference


def _normal(rng, shape, scale=1.0):
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


@pytest.mark.parametrize('per_segment, causal, exclude_self', [
    (2, False, True), (2, True, True), (3, False, False), (3, True, True)])
def test_several_states_per_segment_match_the_reference(
    rng, per_segment, causal, exclude_self):
  num_states, dim, key_dim = 5 * per_segment, 8, 4
  states = _normal(rng, (2, num_states, dim))
  w_q, w_k = (_normal(rng, (dim, key_dim), dim ** -0.5) for _ in range(2))
  w_v = _normal(rng, (dim, dim), dim ** -0.5)
  mask = jnp.asarray(rng.random((2, num_states)) < 0.7)
  got = simmim_jax.segment_state_attention(
      states, w_q, w_k, w_v, mask=mask, causal=causal,
      exclude_self=exclude_self, states_per_segment=per_segment)
  want = reference.segment_state_attention(
      states, w_q, w_k, w_v, mask, causal, exclude_self, per_segment)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  weights = np.asarray(segment_states.segment_state_weights(
      states, w_q, w_k, mask=mask, causal=causal, exclude_self=exclude_self,
      states_per_segment=per_segment))
  same_segment = (np.arange(num_states)[:, None] // per_segment
                  == np.arange(num_states)[None, :] // per_segment)
  if exclude_self:  # no state reads its own segment's states
    assert np.all(weights[:, same_segment] == 0)


@pytest.mark.parametrize('per_segment, causal, use_mask', [
    (1, True, False), (2, True, True), (2, False, True), (3, False, False)])
def test_state_readout_matches_the_reference(rng, per_segment, causal,
                                             use_mask):
  length, segment_len, heads, head_dim = 19, 4, 2, 4
  num_states = 5 * per_segment
  q = _normal(rng, (2, length, heads, head_dim))
  keys, values = (_normal(rng, (2, num_states, heads, head_dim))
                  for _ in range(2))
  mask = (jnp.asarray(rng.random((2, num_states)) < 0.7) if use_mask
          else None)
  got = simmim_jax.state_readout(
      q, keys, values, segment_len=segment_len,
      states_per_segment=per_segment, mask=mask, causal=causal)
  want = reference.state_readout(q, keys, values, segment_len, per_segment,
                                 mask, causal)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if causal:  # segment 0 has no finished segment to read
    assert np.all(np.asarray(got[:, :segment_len]) == 0)


@pytest.mark.parametrize('causal', [False, True])
def test_pick_states_takes_each_segments_first_or_last_vectors(causal):
  batch, length, segment_len, per_segment = 2, 11, 4, 3
  x = jnp.arange(batch * length, dtype=jnp.float32).reshape(batch, length, 1)
  mask = jnp.arange(length)[None, :] < jnp.asarray([[11], [6]])
  states, state_mask = segment_states.pick_states(
      x + 1, segment_len, per_segment, mask=mask, causal=causal)
  for b in range(batch):
    for segment in range(3):
      for a in range(per_segment):
        offset = segment_len - per_segment + a if causal else a
        t = segment * segment_len + offset
        i = segment * per_segment + a
        real = t < length and bool(mask[b, t])
        assert bool(state_mask[b, i]) == real, (b, segment, a)
        # Positions past the end are zeros.
        want = float(x[b, t, 0]) + 1 if t < length else 0.0
        assert float(states[b, i, 0]) == want, (b, segment, a)
  _, no_mask = segment_states.pick_states(x, 11, 2)  # one whole segment
  assert no_mask is None


def test_bad_state_inputs_name_the_problem():
  states, w, w_v = jnp.zeros((2, 6, 8)), jnp.zeros((8, 4)), jnp.zeros((8, 8))
  with pytest.raises(ValueError, match='6 states are not a whole number'):
    simmim_jax.segment_state_attention(states, w, w, w_v,
                                       states_per_segment=4)
  q = jnp.zeros((2, 8, 2, 4))
  with pytest.raises(ValueError, match='keys and values must be'):
    simmim_jax.state_readout(q, q[:, :4], q[:, :3], segment_len=4)
  with pytest.raises(ValueError, match=r'mask must have shape \(2, 4\)'):
    simmim_jax.state_readout(q, q[:, :4], q[:, :4], segment_len=4,
                             mask=jnp.ones((2, 3), bool))
  with pytest.raises(ValueError, match='states_per_segment .5. exceeds'):
    segment_states.pick_states(jnp.zeros((1, 8, 2)), 4, 5)
  with pytest.raises(ValueError, match='state_readout must be one of'):
    simmim_jax.ModelConfig(vocab_size=4, state_readout='broadcast')
  with pytest.raises(ValueError, match=r'states_per_segment \(9\) exceeds'):
    simmim_jax.ModelConfig(vocab_size=4, segment_len=8, max_len=64,
                           states_per_segment=9)
