"""segment_attention's and full_attention's other paths (attention_kernels):
the XLA reshape, the cuDNN wrapper (run on XLA's kernel here) and splash
attention (Pallas interpret mode) against the float64 loop reference, and
the choice among them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simmim_jax.ops import attention
from simmim_jax.ops import attention_kernels
from tests import reference


def _inputs(rng, length, row_lengths, heads=2, head_dim=16,
            dtype=np.float32):
  """q, k, v [len(row_lengths), length, heads, head_dim] and a padding mask
  (each row's real tokens first)."""
  q, k, v = (jnp.asarray(rng.normal(size=(len(row_lengths), length, heads,
                                          head_dim)), dtype)
             for _ in range(3))
  mask = jnp.asarray(np.arange(length)[None] < np.array(row_lengths)[:, None])
  return q, k, v, mask


def _value_and_grads(fn, q, k, v, cotangent):
  return jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2)))(
          q, k, v)


def _check(fn, q, k, v, mask, segment_len, causal, tolerance):
  """fn's output against the float64 reference, its gradients against the
  loop's hand-written backward (checked against autodiff in
  test_attention.py)."""
  got = jax.jit(fn)(q, k, v)
  assert got.dtype == q.dtype and got.shape == q.shape
  want = reference.segment_attention(q, k, v, segment_len, mask, causal)
  np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape),
                          q.dtype)
  _, grads = _value_and_grads(fn, q, k, v, cotangent)
  _, loop_grads = _value_and_grads(
      lambda q, k, v: attention.segment_attention(
          q, k, v, segment_len, mask=mask, causal=causal,
          implementation='loop'), q, k, v, cotangent)
  for g, w in zip(grads, loop_grads):
    np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('length,segment_len,row_lengths', [
    (37, 8, (37, 12)), (5, 8, (5, 0)), (32, 8, (32, 32))])
@pytest.mark.parametrize('causal', [False, True])
def test_xla_path_matches_the_reference_in_float64(rng, length, segment_len,
                                                   row_lengths, causal):
  with jax.enable_x64(True):
    q, k, v, mask = _inputs(rng, length, row_lengths, dtype=np.float64)
    _check(lambda q, k, v: attention.segment_attention(
        q, k, v, segment_len, mask=mask, causal=causal,
        implementation='xla'), q, k, v, mask, segment_len, causal, 1e-12)


@pytest.mark.parametrize('causal', [False, True])
def test_cudnn_wrapper_matches_the_reference(rng, causal):
  # Segments of 8 over 37 tokens (a short last one); the second row's real
  # tokens end inside segment 1, so segments 2-4 have no key.
  q, k, v, mask = _inputs(rng, 37, (37, 12))
  _check(lambda q, k, v: attention_kernels.cudnn_segment_attention(
      q, k, v, mask, 8, causal, kernel='xla'), q, k, v, mask, 8, causal,
         1e-5)


@pytest.mark.parametrize('segment_len,causal', [(128, False), (128, True),
                                                (None, True)])
def test_splash_path_in_interpret_mode_matches_the_reference(
    rng, segment_len, causal):
  # 300 tokens: segments of 128 and a short last one of 44 (full attention:
  # padded to 384); the second row has no key after token 100.
  q, k, v, mask = _inputs(rng, 300, (300, 100))
  if segment_len is None:
    fn = lambda q, k, v: attention.full_attention(
        q, k, v, mask=mask, causal=causal, implementation='splash')
  else:
    fn = lambda q, k, v: attention.segment_attention(
        q, k, v, segment_len, mask=mask, causal=causal,
        implementation='splash')
  _check(fn, q, k, v, mask, segment_len or 300, causal, 1e-5)


def test_full_attention_xla_path_equals_the_loop(rng):
  q, k, v, mask = _inputs(rng, 19, (19, 7))
  for causal in (False, True):
    np.testing.assert_allclose(
        attention.full_attention(q, k, v, mask=mask, causal=causal,
                                 implementation='xla'),
        reference.segment_attention(q, k, v, 19, mask, causal),
        rtol=1e-5, atol=1e-6)


def test_none_picks_the_fastest_path_per_backend_and_dtype():
  choose = attention_kernels.choose_implementation
  bf16, f32 = jnp.bfloat16, jnp.float32
  assert choose(None, dtype=bf16, head_dim=64, segment_len=128,
                backend='cpu') == 'loop'
  assert choose(None, dtype=bf16, head_dim=64, segment_len=100,
                backend='gpu') == 'cudnn'
  assert choose(None, dtype=jnp.float16, head_dim=64, segment_len=None,
                backend='gpu') == 'cudnn'
  assert choose(None, dtype=f32, head_dim=64, segment_len=128,
                backend='gpu') == 'xla'
  assert choose(None, dtype=bf16, head_dim=12, segment_len=128,
                backend='gpu') == 'xla'
  assert choose(None, dtype=f32, head_dim=64, segment_len=256,
                backend='tpu') == 'splash'
  assert choose(None, dtype=f32, head_dim=64, segment_len=None,
                backend='tpu') == 'splash'
  assert choose(None, dtype=f32, head_dim=64, segment_len=64,
                backend='tpu') == 'xla'
  assert choose('loop', dtype=f32, head_dim=64, segment_len=64,
                backend='tpu') == 'loop'


@pytest.mark.parametrize('implementation,segment_len,dtype,message', [
    ('cudnn', 128, jnp.bfloat16, "GPU backend, this is 'cpu'"),
    ('splash', 64, jnp.float32, 'segment_len a multiple of 128'),
    ('flash', 128, jnp.float32, r"one of \('loop', 'xla', 'cudnn'"),
])
def test_a_path_that_cannot_take_the_inputs_says_why(
    rng, implementation, segment_len, dtype, message):
  q, k, v, _ = _inputs(rng, 8, (8,), dtype=dtype)
  with pytest.raises(ValueError, match=message):
    attention.segment_attention(q, k, v, segment_len,
                                implementation=implementation)
  choose = attention_kernels.choose_implementation
  with pytest.raises(ValueError, match='bfloat16 or float16, got float32'):
    choose('cudnn', dtype=jnp.float32, head_dim=64, segment_len=128,
           backend='gpu')
  with pytest.raises(ValueError, match='multiple of 8 up to 256, got 300'):
    choose('cudnn', dtype=jnp.bfloat16, head_dim=300, segment_len=128,
           backend='gpu')
