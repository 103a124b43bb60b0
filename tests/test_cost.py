"""Compiled cost: segment attention is linear in length, full quadratic."""

import jax
import jax.numpy as jnp
import numpy as np

import simmim_jax
from simmim_jax.cost import compiled_cost
from simmim_jax.cost import jaxpr_flops

LENGTHS = (2048, 4096, 8192, 16384)


def _spec(length, heads=2, head_dim=16):
  return jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)


def _flops(fn, length):
  spec = _spec(length)
  return compiled_cost(fn, spec, spec, spec)['flops']


def test_segment_attention_flops_grow_linearly():
  flops = [_flops(lambda q, k, v: simmim_jax.segment_attention(q, k, v, 128),
                  n) for n in LENGTHS]
  ratios = np.array(flops[1:]) / np.array(flops[:-1])
  assert np.all(ratios <= 2.2) and np.all(ratios >= 1.8), (flops, ratios)


def test_causal_masked_segment_attention_flops_grow_linearly():
  def fn(q, k, v):
    mask = jnp.ones(q.shape[:2], bool)
    return simmim_jax.segment_attention(q, k, v, 128, mask=mask, causal=True)
  flops = [_flops(fn, n) for n in LENGTHS]
  ratios = np.array(flops[1:]) / np.array(flops[:-1])
  assert np.all(ratios <= 2.2), (flops, ratios)


def test_full_attention_flops_grow_quadratically():
  flops = [_flops(simmim_jax.full_attention, n) for n in LENGTHS]
  ratios = np.array(flops[1:]) / np.array(flops[:-1])
  assert np.all(ratios >= 3.6), (flops, ratios)


def test_segment_attention_is_cheaper_than_full_at_length():
  segment = _flops(lambda q, k, v: simmim_jax.segment_attention(q, k, v, 128),
                   16384)
  full = _flops(simmim_jax.full_attention, 16384)
  # 16384 / 128 = 128 times fewer scores; softmax and einsum overheads differ.
  assert full / segment > 60, (full, segment)


def test_jaxpr_flops_count_every_loop_iteration():
  x = jax.ShapeDtypeStruct((8, 16, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((32, 4), jnp.float32)
  one = 2 * 16 * 32 * 4  # one [16, 32] @ [32, 4]
  assert jaxpr_flops(lambda x, w: x[0] @ w, x, w) == one
  looped = jaxpr_flops(lambda x, w: jax.lax.map(lambda xi: xi @ w, x), x, w)
  assert looped == 8 * one
  assert compiled_cost(lambda x, w: jax.lax.map(lambda xi: xi @ w, x), x,
                       w)['xla_flops'] < looped  # XLA: the body once
  nested = jax.jit(jax.checkpoint(lambda x, w: jnp.einsum('bld,dk->blk', x, w)))
  assert jaxpr_flops(nested, x, w) == 8 * one
  assert jaxpr_flops(lambda x, w: jnp.exp(x).sum(), x, w) == 2 * 8 * 16 * 32


def test_smi_encoder_memory_grows_linearly():
  cfg = simmim_jax.ModelConfig(vocab_size=8, d_model=32, num_heads=2,
                               num_layers=1, mlp_dim=64, max_len=16384,
                               segment_len=128, positions='sinusoidal')
  model = simmim_jax.Encoder(cfg)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 128), jnp.int32))
  peaks = [compiled_cost(model.apply, params,
                         jax.ShapeDtypeStruct((1, n), jnp.int32))['peak_bytes']
           for n in (4096, 16384)]
  assert peaks[1] / peaks[0] < 4 * 1.15, peaks
