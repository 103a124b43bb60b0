r"""Ways to compute segment attention, timed side by side in one process.

Each variant computes exactly `simmim_jax.segment_attention` (checked against
it before timing); the table gives median forward and forward+backward times
at one length, the forward+backward rate (the FLOPs that the benchmark
suite counts for it, `cost.jaxpr_flops`, over each variant's time) against a
matmul measured in the same run, compiled peak memory, minor page faults per
forward+backward call, and the PyTorch SDPA peer on the same segments when
torch imports. Variants are timed in interleaved rounds (one call of each per
round), so a slow spell of the machine hits all of them alike. A second
table compares `segment_attention` with padding the inputs at a length that
segment_len does not divide (--tail), a third gives the rate of the batched
[l, 64] @ [64, l] product at several segment lengths l; --profile adds where
`segment_attention`'s forward+backward spends its time.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
  python -m experiments.labs.segment_attention_levers \
      [--length=8192] [--repeats=7]

`import simmim_jax` sets glibc's malloc for XLA (simmim_jax/allocator.py);
SIMMIM_JAX_TUNE_MALLOC=0 runs with glibc's defaults instead.

With more than one device, a last variant splits the heads over all of them.
"""

import collections
import functools
import glob
import gzip
import json
import math
import os
import resource
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark import cases as benchmark_cases
from experiments.benchmark import machine as benchmark_machine
import simmim_jax
from simmim_jax import allocator
from simmim_jax.cost import jaxpr_flops
from simmim_jax.cost import program_cost
from simmim_jax.ops import segment_loop
from simmim_jax.ops import segments

_LENGTH = flags.DEFINE_integer('length', 8192, 'sequence length')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'timed calls (median)')
_ONLY = flags.DEFINE_string(
    'only', '', 'time only the variants whose name starts with this (the '
    'first implementation always runs, as the baseline)')
_PROFILE = flags.DEFINE_bool(
    'profile', False, 'also print where segment_attention forward+backward '
    'spends its time: XLA operations from a jax.profiler trace')
_TAIL = flags.DEFINE_integer(
    'tail', 36, 'positions in the last segment of the ragged-length table, '
    'which runs at length - segment_len + tail (0 skips it)')
_HEADS, _HEAD_DIM, _SEGMENT_LEN = 8, 64, 128


def plain_einsum(q, k, v, segment_len):
  """The previous implementation: reshape to [b, m, l, h, d], two einsums,
  softmax, all differentiated by JAX."""
  length = q.shape[1]
  split = lambda x: segments.split_segments(x, segment_len)
  scores = jnp.einsum('bmqhd,bmkhd->bmhqk',
                      split(q * (1.0 / math.sqrt(q.shape[-1]))), split(k))
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum('bmhqk,bmkhd->bmqhd', weights, split(v))
  return segments.merge_segments(out, length)


def deferred_normalisation(q, k, v, segment_len):
  """Unnormalised exp(scores - max) @ v, then divide the [l, d] output by the
  row sums: one pass fewer over the [l, l] weights (d < l)."""
  length = q.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum('bmqhd,bmkhd->bmhqk',
                      segments.split_segments(q * scale, segment_len),
                      segments.split_segments(k, segment_len))
  weights = jnp.exp(scores - jax.lax.stop_gradient(
      jnp.max(scores, axis=-1, keepdims=True)))
  totals = jnp.sum(weights, axis=-1)  # [b, m, h, q]
  out = jnp.einsum('bmhqk,bmkhd->bmqhd', weights,
                   segments.split_segments(v, segment_len))
  out = out / jnp.swapaxes(totals, 2, 3)[..., None]
  return segments.merge_segments(out, length)


def heads_major(q, k, v, segment_len):
  """Inputs transposed once to [b, h, m, l, d] so both matmuls have their
  batch dimensions leading."""
  length, dim = q.shape[1], q.shape[3]
  to_heads = lambda x: _to_heads(x, segment_len)  # [b, h, m, l, d]
  scores = jnp.einsum('bhmqd,bhmkd->bhmqk', to_heads(q / math.sqrt(dim)),
                      to_heads(k))
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum('bhmqk,bhmkd->bhmqd', weights, to_heads(v))
  return segments.merge_segments(jnp.moveaxis(out, 1, 3), length)


def _to_heads(x, segment_len):
  return jnp.moveaxis(segments.split_segments(x, segment_len), 3, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def heads_major_custom_vjp(q, k, v, segment_len):
  """The second implementation: heads-major at full length, two batched
  einsums, and a hand-written VJP from the stored weights."""
  return _heads_major_forward(q, k, v, segment_len)[0]


def _heads_major_forward(q, k, v, segment_len):
  q, k, v = (_to_heads(x, segment_len) for x in (q, k, v))
  weights = jax.nn.softmax(jnp.einsum(
      'bhmqd,bhmkd->bhmqk', q / math.sqrt(q.shape[-1]), k), axis=-1)
  out = jnp.einsum('bhmqk,bhmkd->bhmqd', weights, v)
  length = q.shape[2] * segment_len
  return (segments.merge_segments(jnp.moveaxis(out, 1, 3), length),
          (q, k, v, out, weights))


def _heads_major_backward(segment_len, residuals, d_out):
  q, k, v, out, weights = residuals
  length = d_out.shape[1]
  d_out = _to_heads(d_out, segment_len)
  d_v = jnp.einsum('bhmqk,bhmqd->bhmkd', weights, d_out)
  d_weights = jnp.einsum('bhmqd,bhmkd->bhmqk', d_out, v)
  row = jnp.sum(d_out * out, axis=-1, keepdims=True)
  d_scores = weights * (d_weights - row) / math.sqrt(q.shape[-1])
  d_q = jnp.einsum('bhmqk,bhmkd->bhmqd', d_scores, k)
  d_k = jnp.einsum('bhmqk,bhmqd->bhmkd', d_scores, q)
  return tuple(segments.merge_segments(jnp.moveaxis(g, 1, 3), length)
               for g in (d_q, d_k, d_v))


heads_major_custom_vjp.defvjp(_heads_major_forward, _heads_major_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def saved_output_vjp(q, k, v, segment_len):
  """The third implementation: today's loop over steps, but its VJP saved the
  output for the softmax backward's row sums, rowsum(dout * out)."""
  return simmim_jax.segment_attention(q, k, v, segment_len)


def _saved_output_forward(q, k, v, segment_len):
  out, (*_, weights, _) = segment_loop._segment_attention_forward(
      q, k, v, None, segment_len, False, segment_loop.Levers())
  return out, (q, k, v, out, weights)


def _saved_output_step(q, k, v, out, d_out, weights):
  blocks, unblock = segment_loop._blocks, segment_loop._unblock
  heads = q.shape[2]
  q, k, v, out, d_out = (blocks(x) for x in (q, k, v, out, d_out))
  d_v = jnp.einsum('bkq,bqd->bkd', segment_loop._transposed(weights), d_out)
  d_weights = jnp.einsum('bqd,bkd->bqk', d_out, v)
  row = jnp.sum(d_out * out, axis=-1, keepdims=True)
  d_scores = weights * (d_weights - row) / math.sqrt(q.shape[-1])
  d_q = jnp.einsum('bqk,bkd->bqd', d_scores, k)
  d_k = jnp.einsum('bkq,bqd->bkd', segment_loop._transposed(d_scores), q)
  return tuple(unblock(g, heads) for g in (d_q, d_k, d_v))


def _saved_output_backward(segment_len, residuals, d_out):
  q, k, v, out, weights = residuals
  return segment_loop._gradient_loop(_saved_output_step, (q, k, v, out, d_out),
                                  weights,
                                  segment_loop._layout(q.shape, segment_len))


saved_output_vjp.defvjp(_saved_output_forward, _saved_output_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def two_lanes(q, k, v, segment_len):
  """Each loop iteration runs two steps, one from each half of the sequence.
  They share no data, so XLA's CPU runtime may run them on two threads at
  once; with the concurrency-optimised scheduler they also share no buffers.
  The backward does the same."""
  return _two_lanes_forward(q, k, v, segment_len)[0]


def _lanes(layout, i):
  return i, i + layout.num_steps // 2


def _two_lanes_forward(q, k, v, segment_len):
  layout = segment_loop._layout(q.shape, segment_len)
  if layout.tail or layout.num_steps % 2:
    raise ValueError(f'two lanes need an even number of loop steps and no '
                     f'tail, got {layout}')

  def step(out, i):
    weights = []
    for j in _lanes(layout, i):
      step_out, step_weights = segment_loop._step_forward(
          *(segment_loop._read_step(x, layout, j) for x in (q, k, v)), None,
          False)
      out = segment_loop._write_step(out, step_out, layout, j)
      weights.append(step_weights)
    return out, jnp.stack(weights)

  out, weights = jax.lax.scan(step, jnp.zeros_like(q),
                              jnp.arange(layout.num_steps // 2))
  return out, (q, k, v, weights)


def _two_lanes_backward(segment_len, residuals, d_out):
  q, k, v, weights = residuals
  layout = segment_loop._layout(q.shape, segment_len)

  def step(grads, i_and_weights):
    i, both_weights = i_and_weights
    for j, step_weights in zip(_lanes(layout, i), both_weights):
      step_grads = segment_loop._step_backward(
          *(segment_loop._read_step(x, layout, j) for x in (q, k, v, d_out)),
          step_weights)
      grads = tuple(segment_loop._write_step(g, s, layout, j)
                    for g, s in zip(grads, step_grads))
    return grads, None

  grads, _ = jax.lax.scan(step, tuple(jnp.zeros_like(x) for x in (q, k, v)),
                          (jnp.arange(layout.num_steps // 2), weights))
  return grads


two_lanes.defvjp(_two_lanes_forward, _two_lanes_backward)


def padded_to_segments(q, k, v, segment_len):
  """The implementation before the tail step: inputs padded to a multiple of
  segment_len, the padding masked out of the keys, the output sliced."""
  batch, length = q.shape[:2]
  padded = -(-length // segment_len) * segment_len
  mask = jnp.broadcast_to(jnp.arange(padded) < length, (batch, padded))
  q, k, v = (segments.pad_length(x, padded) for x in (q, k, v))
  return simmim_jax.segment_attention(q, k, v, segment_len,
                                      mask=mask)[:, :length]


def xla_sdpa(q, k, v, segment_len):
  """`jax.nn.dot_product_attention` on [b * m, l, h, d] segments."""
  batch, length, heads, dim = q.shape
  fold = lambda x: segments.split_segments(x, segment_len).reshape(
      -1, segment_len, heads, dim)
  out = jax.nn.dot_product_attention(fold(q), fold(k), fold(v),
                                     implementation='xla')
  return out.reshape(batch, -1, heads, dim)[:, :length]


def chunked(q, k, v, segment_len, segments_per_chunk=8):
  """`lax.map` over groups of segments, so each group's scores stay in cache."""
  batch, length, heads, dim = q.shape
  group = segment_len * segments_per_chunk
  split = lambda x: jnp.moveaxis(
      segments.split_segments(x, group), 1, 0)  # [chunks, b, group, h, d]
  out = jax.lax.map(
      lambda qkv: simmim_jax.segment_attention(*qkv, segment_len),
      (split(q), split(k), split(v)))
  return jnp.moveaxis(out, 0, 1).reshape(batch, -1, heads, dim)[:, :length]


def _chunks(x, segment_len, group):
  """[b, n, h, d] -> [chunks, b, group, segment_len, h, d]; a group larger
  than the segment count shrinks to a divisor of it."""
  split = segments.split_segments(x, segment_len)
  batch, num_segments = split.shape[:2]
  group = math.gcd(group, num_segments)
  return jnp.moveaxis(split.reshape(
      batch, num_segments // group, group, *split.shape[2:]), 1, 0)


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


def segment_attention(q, k, v, segment_len):
  return simmim_jax.segment_attention(q, k, v, segment_len)


def with_levers(**levers):
  """`segment_attention` with other choices of its loop (segment_loop.Levers:
  the score budget of a step, the transpose barrier), passed explicitly."""
  choices = segment_loop.Levers(**levers)

  def fn(q, k, v, segment_len):
    return segment_loop.loop_attention(q, k, v, None, segment_len, False,
                                        choices)
  return fn


def bfloat16_inputs(q, k, v, segment_len):
  """`segment_attention` on bfloat16 q, k, v: bfloat16 products with float32
  scores, softmax and backward (the function's mixed-precision contract)."""
  cast = lambda x: x.astype(jnp.bfloat16)
  return simmim_jax.segment_attention(cast(q), cast(k), cast(v),
                                      segment_len).astype(q.dtype)


def _step_scores(segments):
  """A score budget of `segments` segments per loop step at these sizes."""
  return segments * _HEADS * _SEGMENT_LEN * _SEGMENT_LEN


# name: fn(q, k, v, segment_len)
VARIANTS = {
    'reshape + einsum, autodiff (first)': plain_einsum,
    'heads-major, custom VJP (second)': heads_major_custom_vjp,
    'steps, VJP saving the output (third)': saved_output_vjp,
    'segment_attention (steps of 4 segments, custom VJP)': segment_attention,
    '... steps of 1 segment': with_levers(step_scores=_step_scores(1)),
    '... steps of 16 segments': with_levers(step_scores=_step_scores(16)),
    '... on bfloat16 inputs': bfloat16_inputs,
    '... two steps per loop iteration': two_lanes,
    '... two steps per loop iteration, concurrency-optimised scheduler': (
        two_lanes),
    '... without the transpose barrier': with_levers(transpose_barrier=False),
    'deferred normalisation': deferred_normalisation,
    'heads-major layout, autodiff': heads_major,
    'jax.nn.dot_product_attention on segments': xla_sdpa,
    'lax.map over 8-segment chunks, autodiff': chunked,
    'custom_vjp, recompute per 4-segment chunk': recompute_chunked,
    'custom_vjp, recompute per 16-segment chunk': functools.partial(
        recompute_chunked, group=16),
}


# (rtol, atol) against float32 segment_attention; the default is float32's.
_TOLERANCE = {'... on bfloat16 inputs': (2e-2, 2e-2)}

# XLA options a variant is compiled with.
_COMPILER_OPTIONS = {
    '... two steps per loop iteration, concurrency-optimised scheduler': {
        'xla_cpu_enable_concurrency_optimized_scheduler': True},
}


def _minor_faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _interleaved(calls, rounds):
  """Median seconds and minor page faults per call, one call of each per
  round after a warm-up call of each."""
  for call in calls.values():
    jax.block_until_ready(call())
  seconds = {name: [] for name in calls}
  faults = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      before, start = _minor_faults(), time.perf_counter()
      jax.block_until_ready(call())
      seconds[name].append(time.perf_counter() - start)
      faults[name].append(_minor_faults() - before)
  return ({name: float(np.median(t)) for name, t in seconds.items()},
          {name: float(np.median(f)) for name, f in faults.items()})


def _forward_and_gradient(fn, cotangent):
  """Jitted fn(q, k, v, segment_len), and sum(fn * cotangent) with its
  gradients with respect to q, k, v (the value too, as in training: XLA
  would otherwise drop the forward's last product)."""
  forward = jax.jit(lambda q, k, v: fn(q, k, v, _SEGMENT_LEN))
  both = jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(fn(q, k, v, _SEGMENT_LEN) * cotangent),
      argnums=(0, 1, 2)))
  return forward, both


def _split_heads_calls(name, q, k, v, cotangent, want):
  """`segment_attention` with its heads sharded over all devices. XLA's CPU
  backend runs a batched dot on one core, so on a CPU started with
  XLA_FLAGS=--xla_force_host_platform_device_count=N this is how the
  segments use N cores."""
  mesh = jax.make_mesh((jax.device_count(),), ('heads',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  split = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, None, 'heads', None))
  q, k, v, cotangent = (jax.device_put(x, split)
                        for x in (q, k, v, cotangent))
  forward, both = _forward_and_gradient(segment_attention, cotangent)
  np.testing.assert_allclose(forward(q, k, v), want, rtol=2e-4, atol=2e-5)
  return {name + ' fwd': lambda: forward(q, k, v),
          name + ' both': lambda: both(q, k, v)}


def main(argv):
  del argv
  length = _LENGTH.value
  shape = (1, length, _HEADS, _HEAD_DIM)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, cotangent = (jax.random.normal(key, shape) for key in keys)
  want = simmim_jax.segment_attention(q, k, v, _SEGMENT_LEN)
  print(f'length {length}, {_HEADS} heads of {_HEAD_DIM}, segment_len '
        f'{_SEGMENT_LEN}, float32, batch 1, median of {_REPEATS.value} '
        'interleaved rounds')
  tuned = ', '.join(f'{k}={v}' for k, v in allocator.applied.items())
  print(f'malloc set by simmim_jax on import: {tuned or "none"}')
  size = 4096
  a, b = (jax.random.normal(key, (size, size)) for key in keys[:2])
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  calls = {'matmul': lambda: matmul(a, b)}
  names = [name for i, name in enumerate(VARIANTS)
           if i == 0 or name.startswith(_ONLY.value)]
  # Every variant computes the same function: rates use the FLOPs that the
  # suite counts for segment_attention's forward+backward.
  useful_flops = jaxpr_flops(
      _forward_and_gradient(segment_attention, cotangent)[1], q, k, v)
  peaks = {}
  for name in names:
    forward, both = _forward_and_gradient(VARIANTS[name], cotangent)
    options = _COMPILER_OPTIONS.get(name)
    forward = forward.lower(q, k, v).compile(options)
    both = both.lower(q, k, v).compile(options)
    rtol, atol = _TOLERANCE.get(name, (2e-4, 2e-5))
    np.testing.assert_allclose(forward(q, k, v), want, rtol=rtol, atol=atol)
    peaks[name] = program_cost(both)['peak_bytes']
    calls[name + ' fwd'] = lambda forward=forward: forward(q, k, v)
    calls[name + ' both'] = lambda both=both: both(q, k, v)
  if jax.device_count() > 1:
    name = (f'segment_attention, heads split over {jax.device_count()} '
            f'{jax.devices()[0].platform.upper()} devices')
    calls.update(_split_heads_calls(name, q, k, v, cotangent, want))
    names.append(name)
  torch, unavailable = benchmark_machine.import_torch()
  if torch is not None:
    torch.set_num_threads(benchmark_machine.available_cpus())
    peer = benchmark_cases.torch_calls(torch, benchmark_cases.Sizes(),
                                       'torch_sdpa_segments', length, 'cpu')
    torch_name = f'PyTorch {torch.__version__} SDPA on segments'
    calls[torch_name + ' fwd'] = peer[benchmark_cases.FORWARD]
    calls[torch_name + ' both'] = peer[benchmark_cases.BACKWARD]
  seconds, faults = _interleaved(calls, _REPEATS.value)
  ceiling = 2.0 * size**3 / seconds['matmul'] / 1e9
  print(f'matmul ceiling: {ceiling:.1f} GFLOP/s ({size}^3, float32)')
  print('| variant | fwd ms | fwd+bwd ms | fwd+bwd GFLOP/s | % ceiling | '
        'peak MiB | page faults |\n|---|---:|---:|---:|---:|---:|---:|')
  names += [torch_name] if torch is not None else []
  for name in names:
    fwd, bwd = seconds[name + ' fwd'], seconds[name + ' both']
    rate = useful_flops / bwd / 1e9
    peak = f'{peaks[name] / 2**20:.0f}' if name in peaks else ''
    print(f'| {name} | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} | {rate:.1f} | '
          f'{rate / ceiling:.0%} | {peak} | {faults[name + " both"]:.0f} |')
  if torch is None:
    print(f'PyTorch peer skipped: {unavailable}')
  if _TAIL.value:
    _print_ragged(keys, length - _SEGMENT_LEN + _TAIL.value)
  _print_dot_rates(keys[0], ceiling)
  if _PROFILE.value:
    _, both = _forward_and_gradient(segment_attention, cotangent)
    jax.block_until_ready(both(q, k, v))
    _print_profile(lambda: both(q, k, v), _REPEATS.value)


def _print_ragged(keys, length):
  """segment_attention at a length that segment_len does not divide (its
  last segment is a step of its own) against padding the inputs."""
  shape = (1, length, _HEADS, _HEAD_DIM)
  q, k, v, cotangent = (jax.random.normal(key, shape) for key in keys)
  calls, peaks = {}, {}
  for name, fn in (('segment_attention', segment_attention),
                   ('padded to a multiple of segment_len (before)',
                    padded_to_segments)):
    forward, both = (f.lower(q, k, v).compile()
                     for f in _forward_and_gradient(fn, cotangent))
    np.testing.assert_allclose(forward(q, k, v), segment_attention(
        q, k, v, _SEGMENT_LEN), rtol=2e-4, atol=2e-5)
    peaks[name] = program_cost(both)['peak_bytes']
    calls[name + ' fwd'] = lambda forward=forward: forward(q, k, v)
    calls[name + ' both'] = lambda both=both: both(q, k, v)
  seconds, faults = _interleaved(calls, _REPEATS.value)
  print(f'\n| length {length} (last segment {length % _SEGMENT_LEN}) | fwd ms '
        '| fwd+bwd ms | peak MiB | page faults |\n|---|---:|---:|---:|---:|')
  for name in peaks:
    print(f'| {name} | {seconds[name + " fwd"] * 1e3:.1f} | '
          f'{seconds[name + " both"] * 1e3:.1f} | {peaks[name] / 2**20:.0f} | '
          f'{faults[name + " both"]:.0f} |')


def _print_dot_rates(key, ceiling):
  """The batched q.k^T product of segment attention: how fast XLA's CPU
  backend runs a batch of [l, 64] @ [64, l] products as l grows. The first
  row is one loop step of `segment_attention` (4 segments of 8 heads); the
  others have the same FLOPs each (2^29)."""
  print('\n| batched dot [b, l, 64] x [b, l, 64] -> [b, l, l] | ms | GFLOP/s '
        '| % ceiling |\n|---|---:|---:|---:|')
  for batch, segment_len in ((32, 128), *((2**22 // l**2, l)
                                          for l in (128, 256, 512, 1024))):
    x = jax.random.normal(key, (batch, segment_len, _HEAD_DIM))
    dot = jax.jit(lambda a, b: jnp.einsum('bqd,bkd->bqk', a, b))
    seconds, _ = _interleaved({'dot': lambda: dot(x, x)}, _REPEATS.value)
    rate = 2 * batch * segment_len**2 * _HEAD_DIM / seconds['dot'] / 1e9
    print(f'| b={batch}, l={segment_len} | {seconds["dot"] * 1e3:.2f} | '
          f'{rate:.0f} | {rate / ceiling:.0%} |')


def _print_profile(call, calls):
  """Milliseconds per call of each XLA operation (thunk) in `call`, from the
  trace of `calls` calls; loops are charged to the operations they run."""
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(calls):
      jax.block_until_ready(call())
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'),
                      recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  micros = collections.Counter()
  for event in events:
    name = event.get('name', '')
    # Thunks are named after their HLO instruction; runtime and Python
    # events carry '::', '$' or spaces, and a while loop's time is its body's.
    if (event.get('ph') == 'X' and not any(c in name for c in ':$ (')
        and not name.startswith('while')):
      micros[name] += event['dur']
  total = sum(micros.values())
  print(f'\nsegment_attention forward+backward, XLA operations (ms per call, '
        f'{total / calls / 1e3:.1f} in all):\n| operation | ms | share |\n'
        '|---|---:|---:|')
  for name, micro in micros.most_common(12):
    print(f'| {name} | {micro / calls / 1e3:.2f} | {micro / total:.0%} |')
  products = sum(m for n, m in micros.items() if n.startswith('ynn_fusion'))
  print(f'| all ynn_fusion (products, fused softmax) | '
        f'{products / calls / 1e3:.2f} | {products / total:.0%} |')


if __name__ == '__main__':
  app.run(main)
