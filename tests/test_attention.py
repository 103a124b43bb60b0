"""segment_attention, segment_state_attention and full_attention against
float64 loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.ops import segment_loop
from simmim_jax.ops import segments
from tests import reference


def _qkv(rng, batch, length, heads, head_dim, dtype=np.float32):
  return [jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype)
          for _ in range(3)]


@pytest.fixture(params=[None, 4])
def segments_per_step(request, monkeypatch):
  """segment_attention loops over steps of a few segments, sized by a score
  budget that small test inputs fit in one step; the budget is also cut to
  four segments of 3 heads x 8 x 8 scores (so 96 tokens take 3 steps of 4
  segments per row, 37 tokens one step of 4 and a tail step of 5 positions,
  and 45 tokens 5 steps of 1 and a tail of 5)."""
  if request.param is not None:
    monkeypatch.setattr(segment_loop, '_STEP_SCORES', request.param * 3 * 8 * 8)
  return request.param


def _suffix_mask(rng, batch, length):
  lengths = rng.integers(1, length + 1, size=batch)
  return jnp.asarray(np.arange(length)[None] < lengths[:, None])


@pytest.mark.parametrize('length,segment_len', [
    (32, 8), (37, 8), (5, 8), (16, 1), (23, 23), (50, 7), (96, 8)])
@pytest.mark.parametrize('use_mask', [False, True])
@pytest.mark.parametrize('causal', [False, True])
def test_segment_attention_matches_reference(rng, length, segment_len,
                                             use_mask, causal):
  q, k, v = _qkv(rng, 2, length, 3, 4)
  mask = jnp.asarray(rng.random((2, length)) < 0.7) if use_mask else None
  got = simmim_jax.segment_attention(q, k, v, segment_len, mask=mask,
                                     causal=causal)
  want = reference.segment_attention(q, k, v, segment_len, mask, causal)
  assert got.shape == q.shape and got.dtype == q.dtype
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _autodiff_segment_attention(q, k, v, segment_len, mask, causal):
  """The definition in plain jnp, differentiated by JAX (no custom rule)."""
  length, head_dim = q.shape[1], q.shape[3]
  split = lambda x: segments.split_segments(x, segment_len)
  scores = jnp.einsum('bmqhd,bmkhd->bmhqk', split(q), split(k)) / np.sqrt(
      head_dim)
  allowed = segments.segment_key_mask(mask, q.shape[0], length, segment_len)
  allowed = None if allowed is None else allowed[:, :, None, None, :]
  if causal:
    lower = np.tril(np.ones((segment_len, segment_len), bool))
    allowed = lower if allowed is None else allowed & lower
  weights = segments.masked_softmax(scores, allowed)
  out = jnp.einsum('bmhqk,bmkhd->bmqhd', weights, split(v))
  return segments.merge_segments(out, length)


@pytest.mark.parametrize('length,segment_len', [(32, 8), (37, 8), (45, 8),
                                               (5, 8), (96, 8)])
@pytest.mark.parametrize('use_mask', [False, True])
@pytest.mark.parametrize('causal', [False, True])
def test_segment_attention_gradients_match_autodiff(rng, length, segment_len,
                                                    use_mask, causal,
                                                    segments_per_step):
  with jax.enable_x64(True):
    q, k, v, cotangent = _qkv(rng, 2, length, 3, 4, np.float64) + [
        jnp.asarray(rng.normal(size=(2, length, 3, 4)))]
    mask = jnp.asarray(rng.random((2, length)) < 0.7) if use_mask else None
    mask = None if mask is None else mask.at[0].set(False)  # a keyless row
    results = [jax.value_and_grad(lambda q, k, v: jnp.sum(
        fn(q, k, v, segment_len, mask=mask, causal=causal) * cotangent),
                                  argnums=(0, 1, 2))(q, k, v)
               for fn in (simmim_jax.segment_attention,
                          lambda q, k, v, l, mask, causal:
                          _autodiff_segment_attention(q, k, v, l, mask,
                                                      causal))]
    (value, grads), (want_value, want_grads) = results
    np.testing.assert_allclose(value, want_value, rtol=1e-12)
    for got, want in zip(grads, want_grads):
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('causal', [False, True])
def test_segment_attention_bfloat16(rng, causal):
  q, k, v = _qkv(rng, 2, 45, 2, 8, jnp.bfloat16)
  mask = _suffix_mask(rng, 2, 45)
  got = simmim_jax.segment_attention(q, k, v, 16, mask=mask, causal=causal)
  assert got.dtype == jnp.bfloat16
  want = reference.segment_attention(np.float32(q), np.float32(k),
                                     np.float32(v), 16, mask, causal)
  np.testing.assert_allclose(np.float32(got), want, rtol=3e-2, atol=3e-2)


def test_segments_per_step_divides_the_segments(monkeypatch):
  monkeypatch.setattr(segment_loop, '_STEP_SCORES', 4 * 8 * 128 * 128)
  assert segment_loop._segments_per_step(64, 8, 128) == 4
  assert segment_loop._segments_per_step(6, 8, 128) == 3
  assert segment_loop._segments_per_step(7, 8, 128) == 1
  assert segment_loop._segments_per_step(2, 8, 128) == 2
  assert segment_loop._segments_per_step(64, 64, 128) == 1  # over budget: 1
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert segment_loop._segments_per_step(64, 8, 128) == 64  # no loop off CPU


def test_query_without_keys_outputs_zero(rng):
  q, k, v = _qkv(rng, 1, 12, 2, 4)
  mask = jnp.asarray([[True] * 4 + [False] * 4 + [True] * 4])
  out = simmim_jax.segment_attention(q, k, v, 4, mask=mask)
  np.testing.assert_array_equal(out[0, 4:8], 0.0)
  assert np.all(np.abs(np.asarray(out[0, :4])) > 0)
  grads = jax.grad(lambda q: simmim_jax.segment_attention(
      q, k, v, 4, mask=mask).sum())(q)
  assert np.all(np.isfinite(grads))


def test_segment_attention_never_builds_a_length_by_length_array(rng):
  length, segment_len = 512, 16
  q, k, v = _qkv(rng, 1, length, 2, 4)
  jaxpr = jax.make_jaxpr(lambda q, k, v: simmim_jax.segment_attention(
      q, k, v, segment_len, mask=jnp.ones((1, length), bool), causal=True))(
          q, k, v)
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  biggest = max(int(np.prod(s)) for s in shapes)
  assert biggest <= length * segment_len * 2, shapes
  assert all(s.count(length) <= 1 for s in shapes)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_segment_attention(self):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 2, 30, 2, 4)
    mask = _suffix_mask(rng, 2, 30)
    fn = self.variant(lambda q, k, v, mask: simmim_jax.segment_attention(
        q, k, v, 8, mask=mask, causal=True))
    want = reference.segment_attention(q, k, v, 8, mask, True)
    np.testing.assert_allclose(fn(q, k, v, mask), want, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_segment_state_attention(self):
    rng = np.random.default_rng(2)
    states = jnp.asarray(rng.normal(size=(2, 7, 6)), jnp.float32)
    w_q, w_k = (jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
                for _ in range(2))
    w_v = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)
    fn = self.variant(simmim_jax.segment_state_attention)
    want = reference.segment_state_attention(states, w_q, w_k, w_v)
    np.testing.assert_allclose(fn(states, w_q, w_k, w_v), want, rtol=1e-5,
                               atol=1e-5)


def _state_inputs(rng, batch, num_segments, dim, key_dim, dtype=np.float32):
  states = jnp.asarray(rng.normal(size=(batch, num_segments, dim)), dtype)
  w_q = jnp.asarray(rng.normal(size=(dim, key_dim)) / np.sqrt(dim), dtype)
  w_k = jnp.asarray(rng.normal(size=(dim, key_dim)) / np.sqrt(dim), dtype)
  w_v = jnp.asarray(rng.normal(size=(dim, dim)) / np.sqrt(dim), dtype)
  return states, w_q, w_k, w_v


@pytest.mark.parametrize('num_segments', [1, 2, 5, 16])
@pytest.mark.parametrize('use_mask', [False, True])
@pytest.mark.parametrize('causal,exclude_self', [
    (False, True), (True, True), (False, False)])
def test_segment_state_attention_matches_reference(rng, num_segments, use_mask,
                                                   causal, exclude_self):
  states, w_q, w_k, w_v = _state_inputs(rng, 3, num_segments, 8, 5)
  mask = (jnp.asarray(rng.random((3, num_segments)) < 0.6) if use_mask
          else None)
  got = simmim_jax.segment_state_attention(states, w_q, w_k, w_v, mask=mask,
                                           causal=causal,
                                           exclude_self=exclude_self)
  want = reference.segment_state_attention(states, w_q, w_k, w_v, mask, causal,
                                           exclude_self)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_segment_state_attention_bfloat16(rng):
  states, w_q, w_k, w_v = _state_inputs(rng, 2, 9, 16, 8, jnp.bfloat16)
  mask = _suffix_mask(rng, 2, 9)
  got = simmim_jax.segment_state_attention(states, w_q, w_k, w_v, mask=mask)
  assert got.dtype == jnp.bfloat16
  want = reference.segment_state_attention(
      *(np.float32(a) for a in (states, w_q, w_k, w_v)), mask)
  np.testing.assert_allclose(np.float32(got), want, rtol=3e-2, atol=3e-2)


def test_state_with_no_other_valid_segment_is_unchanged(rng):
  states, w_q, w_k, w_v = _state_inputs(rng, 1, 4, 8, 8)
  mask = jnp.asarray([[False, True, False, False]])
  got = simmim_jax.segment_state_attention(states, w_q, w_k, w_v, mask=mask)
  np.testing.assert_array_equal(got[0, 1], states[0, 1])
  causal = simmim_jax.segment_state_attention(states, w_q, w_k, w_v,
                                              causal=True)
  np.testing.assert_array_equal(causal[0, 0], states[0, 0])


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
@pytest.mark.parametrize('causal', [False, True])
def test_full_attention_is_one_segment(rng, causal, backend, monkeypatch):
  # 'gpu' runs the other backends' path (jax.nn.dot_product_attention) here.
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  q, k, v = _qkv(rng, 3, 19, 2, 4)
  mask = np.array(_suffix_mask(rng, 3, 19))
  mask[2] = False  # a wholly masked row reads zeros
  got = simmim_jax.full_attention(q, k, v, mask=mask, causal=causal)
  want = reference.segment_attention(q, k, v, 19, mask, causal)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.any(got[2])


def test_cross_attention_matches_reference(rng):
  q = _qkv(rng, 3, 5, 2, 4)[0]
  k, v = _qkv(rng, 3, 7, 2, 4)[1:]
  key_mask = np.arange(7)[None, :] < np.asarray([7, 2, 0])[:, None]
  got = simmim_jax.cross_attention(q, k, v, key_mask=key_mask)
  np.testing.assert_allclose(got, reference.cross_attention(q, k, v, key_mask),
                             rtol=1e-5, atol=1e-6)
  assert not np.any(got[2])  # a row without keys reads zeros
  with pytest.raises(ValueError, match='k and v must be'):
    simmim_jax.cross_attention(q, k, v[:, :, :1])


def test_masked_softmax_empty_row_is_zero_with_finite_gradient():
  scores = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  allowed = jnp.asarray([[True, False, True], [False, False, False]])
  weights = segments.masked_softmax(scores, allowed)
  np.testing.assert_allclose(weights[0], [1 / (1 + np.e**2), 0,
                                          np.e**2 / (1 + np.e**2)], rtol=1e-6)
  np.testing.assert_array_equal(weights[1], 0.0)
  grad = jax.grad(lambda s: segments.masked_softmax(s, allowed)[:, 0].sum())(
      scores)
  assert np.all(np.isfinite(grad))


def _good_qkv():
  return [jnp.zeros((2, 8, 2, 4)) for _ in range(3)]


@pytest.mark.parametrize('segment_len,message', [
    (0, 'segment_len'), (-3, 'segment_len'), (2.5, 'segment_len'),
    (True, 'segment_len')])
def test_bad_segment_len(segment_len, message):
  with pytest.raises(ValueError, match=message):
    simmim_jax.segment_attention(*_good_qkv(), segment_len)


def test_bad_attention_inputs():
  q, k, v = _good_qkv()
  with pytest.raises(ValueError, match='k has shape'):
    simmim_jax.segment_attention(q, k[:, :7], v, 4)
  with pytest.raises(ValueError, match='v has shape'):
    simmim_jax.segment_attention(q, k, v[..., :3], 4)
  with pytest.raises(ValueError, match='q must have rank 4'):
    simmim_jax.segment_attention(q[0], k[0], v[0], 4)
  with pytest.raises(ValueError, match=r'mask must have shape \(2, 8\)'):
    simmim_jax.segment_attention(q, k, v, 4, mask=jnp.ones((2, 9), bool))
  with pytest.raises(ValueError, match='mask must be boolean'):
    simmim_jax.segment_attention(q, k, v, 4, mask=jnp.ones((2, 8)))
  with pytest.raises(ValueError, match='q must have rank 4'):
    simmim_jax.full_attention(q[0], k[0], v[0])


def test_bad_state_inputs():
  states = jnp.zeros((2, 5, 8))
  w = jnp.zeros((8, 4))
  w_v = jnp.zeros((8, 8))
  with pytest.raises(ValueError, match='states must have rank 3'):
    simmim_jax.segment_state_attention(states[0], w, w, w_v)
  with pytest.raises(ValueError, match='must have 8 rows'):
    simmim_jax.segment_state_attention(states, w[:6], w[:6], w_v)
  with pytest.raises(ValueError, match='w_k has shape'):
    simmim_jax.segment_state_attention(states, w, w[:, :3], w_v)
  with pytest.raises(ValueError, match='w_v must have shape'):
    simmim_jax.segment_state_attention(states, w, w, w)
  with pytest.raises(ValueError, match=r'mask must have shape \(2, 5\)'):
    simmim_jax.segment_state_attention(states, w, w, w_v,
                                       mask=jnp.ones((2, 4), bool))


def test_float64_inputs_keep_float64_precision(rng):
  with jax.enable_x64(True):
    q, k, v = _qkv(rng, 2, 21, 2, 4, np.float64)
    mask = _suffix_mask(rng, 2, 21)
    got = simmim_jax.segment_attention(q, k, v, 8, mask=mask, causal=True)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(
        got, reference.segment_attention(q, k, v, 8, mask, True), rtol=1e-12,
        atol=1e-12)
    states, w_q, w_k, w_v = _state_inputs(rng, 2, 6, 5, 3, np.float64)
    got = simmim_jax.segment_state_attention(states, w_q, w_k, w_v)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(
        got, reference.segment_state_attention(states, w_q, w_k, w_v),
        rtol=1e-12, atol=1e-12)


def test_weights_functions_are_what_the_attention_uses(rng,
                                                     segments_per_step):
  q, k, v = _qkv(rng, 2, 45, 3, 4)
  mask = _suffix_mask(rng, 2, 45)
  weights = simmim_jax.segment_attention_weights(q, k, 8, mask=mask,
                                                 causal=True)
  assert weights.shape == (2, 6, 3, 8, 8)
  v_seg = segments.split_segments(v, 8)
  rebuilt = segments.merge_segments(
      jnp.einsum('bmhqk,bmkhd->bmqhd', weights, v_seg), 45)
  np.testing.assert_allclose(
      rebuilt, simmim_jax.segment_attention(q, k, v, 8, mask=mask, causal=True),
      rtol=1e-5, atol=1e-6)

  states, w_q, w_k, w_v = _state_inputs(rng, 2, 6, 8, 4)
  seg_mask = _suffix_mask(rng, 2, 6)
  state_weights = simmim_jax.segment_state_weights(states, w_q, w_k,
                                                   mask=seg_mask)
  np.testing.assert_allclose(
      states + state_weights @ (states @ w_v),
      simmim_jax.segment_state_attention(states, w_q, w_k, w_v, mask=seg_mask),
      rtol=1e-5, atol=1e-6)
  assert np.all(np.diagonal(state_weights, axis1=1, axis2=2) == 0)
