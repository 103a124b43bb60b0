r"""Ways to compute segment attention, timed side by side in one process.

Each variant computes exactly `simmim_jax.segment_attention` (checked against
it before timing); the table gives median forward and forward+backward times
at one length, the forward+backward rate (the previous implementation's XLA
FLOP count over each variant's time) against a matmul measured in the same
run, compiled peak memory, and the PyTorch SDPA peer on the same segments
when torch imports.

  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
  python -m experiments.segment_attention_levers [--length=8192] [--repeats=7]
"""

import functools
import math

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import simmim_jax
from simmim_jax import attention
from simmim_jax import benchmark_cases
from simmim_jax import benchmarks
from simmim_jax.cost import compiled_cost
from simmim_jax.cost import median_seconds

_LENGTH = flags.DEFINE_integer('length', 8192, 'sequence length')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'timed calls (median)')
_HEADS, _HEAD_DIM, _SEGMENT_LEN = 8, 64, 128


def plain_einsum(q, k, v, segment_len):
  """The previous implementation: reshape to [b, m, l, h, d], two einsums,
  softmax, all differentiated by JAX."""
  length = q.shape[1]
  split = lambda x: attention.split_segments(x, segment_len)
  scores = jnp.einsum('bmqhd,bmkhd->bmhqk',
                      split(q * (1.0 / math.sqrt(q.shape[-1]))), split(k))
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum('bmhqk,bmkhd->bmqhd', weights, split(v))
  return attention.merge_segments(out, length)


def deferred_normalisation(q, k, v, segment_len):
  """Unnormalised exp(scores - max) @ v, then divide the [l, d] output by the
  row sums: one pass fewer over the [l, l] weights (d < l)."""
  length = q.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum('bmqhd,bmkhd->bmhqk',
                      attention.split_segments(q * scale, segment_len),
                      attention.split_segments(k, segment_len))
  weights = jnp.exp(scores - jax.lax.stop_gradient(
      jnp.max(scores, axis=-1, keepdims=True)))
  totals = jnp.sum(weights, axis=-1)  # [b, m, h, q]
  out = jnp.einsum('bmhqk,bmkhd->bmqhd', weights,
                   attention.split_segments(v, segment_len))
  out = out / jnp.swapaxes(totals, 2, 3)[..., None]
  return attention.merge_segments(out, length)


def heads_major(q, k, v, segment_len):
  """Inputs transposed once to [b, h, m, l, d] so both matmuls have their
  batch dimensions leading."""
  length, dim = q.shape[1], q.shape[3]
  to_heads = lambda x: jnp.moveaxis(
      attention.split_segments(x, segment_len), 3, 1)  # [b, h, m, l, d]
  scores = jnp.einsum('bhmqd,bhmkd->bhmqk', to_heads(q / math.sqrt(dim)),
                      to_heads(k))
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum('bhmqk,bhmkd->bhmqd', weights, to_heads(v))
  return attention.merge_segments(jnp.moveaxis(out, 1, 3), length)


def xla_sdpa(q, k, v, segment_len):
  """`jax.nn.dot_product_attention` on [b * m, l, h, d] segments."""
  batch, length, heads, dim = q.shape
  fold = lambda x: attention.split_segments(x, segment_len).reshape(
      -1, segment_len, heads, dim)
  out = jax.nn.dot_product_attention(fold(q), fold(k), fold(v),
                                     implementation='xla')
  return out.reshape(batch, -1, heads, dim)[:, :length]


def chunked(q, k, v, segment_len, segments_per_chunk=8):
  """`lax.map` over groups of segments, so each group's scores stay in cache."""
  batch, length, heads, dim = q.shape
  group = segment_len * segments_per_chunk
  split = lambda x: jnp.moveaxis(
      attention.split_segments(x, group), 1, 0)  # [chunks, b, group, h, d]
  out = jax.lax.map(
      lambda qkv: simmim_jax.segment_attention(*qkv, segment_len),
      (split(q), split(k), split(v)))
  return jnp.moveaxis(out, 0, 1).reshape(batch, -1, heads, dim)[:, :length]


def _chunks(x, segment_len, group):
  """[b, n, h, d] -> [chunks, b, group, segment_len, h, d]."""
  segments = attention.split_segments(x, segment_len)
  batch, num_segments = segments.shape[:2]
  return jnp.moveaxis(segments.reshape(
      batch, num_segments // group, group, *segments.shape[2:]), 1, 0)


def _unchunk(x, length):
  """[chunks, b, group, l, h, d] -> [b, length, h, d]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[-2:])[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def recompute_chunked(q, k, v, segment_len, group=4):
  """Flash-style: forward keeps only the output and the log-sum-exp; the
  backward recomputes each chunk's weights, so no [l, l] array is stored."""
  return _recompute_forward(q, k, v, segment_len, group)[0]


def _chunk_forward(q, k, v, scale):
  scores = jnp.einsum('bgqhd,bgkhd->bghqk', q * scale, k)
  lse = jax.nn.logsumexp(scores, axis=-1)  # [b, g, h, q]
  weights = jnp.exp(scores - lse[..., None])
  return jnp.einsum('bghqk,bgkhd->bgqhd', weights, v), lse


def _recompute_forward(q, k, v, segment_len, group):
  scale = 1.0 / math.sqrt(q.shape[-1])
  out, lse = jax.lax.map(
      lambda c: _chunk_forward(*c, scale),
      tuple(_chunks(x, segment_len, group) for x in (q, k, v)))
  out = _unchunk(out, q.shape[1])
  return out, (q, k, v, out, lse)


def _recompute_backward(segment_len, group, residuals, d_out):
  q, k, v, out, lse = residuals
  scale = 1.0 / math.sqrt(q.shape[-1])

  def chunk(c):
    q, k, v, o, do, lse = c
    weights = jnp.exp(jnp.einsum('bgqhd,bgkhd->bghqk', q * scale, k)
                      - lse[..., None])
    dv = jnp.einsum('bghqk,bgqhd->bgkhd', weights, do)
    dp = jnp.einsum('bgqhd,bgkhd->bghqk', do, v)
    delta = jnp.einsum('bgqhd,bgqhd->bghq', do, o)
    ds = weights * (dp - delta[..., None])
    dq = jnp.einsum('bghqk,bgkhd->bgqhd', ds, k) * scale
    dk = jnp.einsum('bghqk,bgqhd->bgkhd', ds, q) * scale
    return dq, dk, dv

  grads = jax.lax.map(chunk, (*(_chunks(x, segment_len, group)
                                for x in (q, k, v, out, d_out)), lse))
  return tuple(_unchunk(g, q.shape[1]) for g in grads)


recompute_chunked.defvjp(_recompute_forward, _recompute_backward)


VARIANTS = {
    'reshape + einsum, autodiff (previous)': plain_einsum,
    'segment_attention (heads-major, custom VJP)': (
        lambda q, k, v, l: simmim_jax.segment_attention(q, k, v, l)),
    'deferred normalisation': deferred_normalisation,
    'heads-major layout, autodiff': heads_major,
    'jax.nn.dot_product_attention on segments': xla_sdpa,
    'lax.map over 8-segment chunks': chunked,
    'custom_vjp, recompute per 4-segment chunk': recompute_chunked,
    'custom_vjp, recompute per 16-segment chunk': functools.partial(
        recompute_chunked, group=16),
}


def main(argv):
  del argv
  length = _LENGTH.value
  shape = (1, length, _HEADS, _HEAD_DIM)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, cotangent = (jax.random.normal(key, shape) for key in keys)
  want = simmim_jax.segment_attention(q, k, v, _SEGMENT_LEN)
  print(f'length {length}, {_HEADS} heads of {_HEAD_DIM}, segment_len '
        f'{_SEGMENT_LEN}, float32, batch 1, median of {_REPEATS.value}')
  ceiling = benchmarks.measure_ceiling(4096, jnp.float32,
                                       _REPEATS.value)['gflops_per_s']
  print(f'matmul ceiling: {ceiling:.1f} GFLOP/s (4096^3, float32)')
  print('| variant | fwd ms | fwd+bwd ms | fwd+bwd GFLOP/s | % ceiling | '
        'peak MiB |\n|---|---:|---:|---:|---:|---:|')
  useful_flops = None  # the previous implementation's count, for every row
  for name, fn in VARIANTS.items():
    forward = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, _SEGMENT_LEN))
    np.testing.assert_allclose(forward(q, k, v), want, rtol=2e-4, atol=2e-5)
    both = jax.jit(jax.grad(
        lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v, _SEGMENT_LEN) * cotangent),
        argnums=(0, 1, 2)))
    cost = compiled_cost(both, q, k, v)
    useful_flops = useful_flops or cost['flops']
    fwd = median_seconds(lambda: forward(q, k, v), _REPEATS.value)
    bwd = median_seconds(lambda: both(q, k, v), _REPEATS.value)
    rate = useful_flops / bwd / 1e9
    print(f"| {name} | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} | {rate:.1f} | "
          f"{rate / ceiling:.0%} | "
          f"{cost['peak_bytes'] / 2**20:.0f} |")
  torch, unavailable = benchmarks.import_torch()
  if torch is None:
    print(f'PyTorch peer skipped: {unavailable}')
    return
  torch.set_num_threads(benchmarks.available_cpus())
  calls = benchmark_cases.torch_calls(torch, benchmark_cases.Sizes(),
                                      'torch_sdpa_segments', length, 'cpu')
  fwd, bwd = (median_seconds(calls[mode], _REPEATS.value) for mode in
              (benchmark_cases.FORWARD, benchmark_cases.BACKWARD))
  print(f'| PyTorch {torch.__version__} SDPA on segments | {fwd * 1e3:.1f} | '
        f'{bwd * 1e3:.1f} | | | |')


if __name__ == '__main__':
  app.run(main)
