"""Segment attention on CPU: a loop over steps of a few segments with a
hand-written backward, and the weights it uses (`segment_attention` in
attention.py picks it on CPU, `full_attention` too, with one segment).

Shapes as in attention.py: q, k, v [batch, length, heads, head_dim]; mask
[batch, length] bool, True = a real token.
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from simmim_jax import checks
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.segments import pad_length
from simmim_jax.ops.segments import score_dtype

# On CPU, segment attention runs as a loop over steps of a few segments in the
# input's own [batch, length, heads, d] layout: each step reads a contiguous
# slice whose scores stay in cache, nothing is transposed at full length, and
# the few large arrays (output, saved weights, gradients) are written once, in
# place. A last segment shorter than segment_len is one more step of its own,
# so the inputs are never padded to a multiple of segment_len (a copy of each).
# The backward is hand-written: it saves q, k, v and the weights (not the
# output), takes the softmax row sums from the weights while they are in
# cache, and keeps every dot in the form XLA's CPU backend runs fastest.
# Measured side by side in experiments/labs/segment_attention_levers.py
# (BENCHMARKS.md).
# XLA's cost analysis counts a loop body once; `cost.jaxpr_flops` counts all.

# Score entries per loop step: 2 MiB of float32, so a step's scores, weights
# and their gradients fit in a core's L2 and the shared L3 of a CPU.
_STEP_SCORES = 2**19


class Levers(NamedTuple):
  """Choices of the loop that experiments/labs/segment_attention_levers.py
  varies, passed down explicitly (hashable: a static argument)."""
  step_scores: Optional[int] = None  # score entries per step; None: the
                                     # module's _STEP_SCORES
  transpose_barrier: bool = True     # see _transposed


def _segments_per_step(num_segments, heads, segment_len, step_scores=None):
  """The largest divisor of num_segments within the step's score budget
  (`step_scores`; None: _STEP_SCORES).

  Only on CPU: on GPU and TPU one step holds every segment, since a loop
  would run its small matmuls one after another on a device built to run
  them side by side.
  """
  if jax.default_backend() != 'cpu':
    return num_segments
  budget = _STEP_SCORES if step_scores is None else step_scores
  most = max(1, budget // (heads * segment_len * segment_len))
  return max(d for d in range(1, min(most, num_segments) + 1)
             if num_segments % d == 0)



def _blocks(x):
  """One step [segments, l, heads, d] -> [heads * segments, l, d]."""
  segments, segment_len, heads, dim = x.shape
  return jnp.moveaxis(x, 2, 0).reshape(heads * segments, segment_len, dim)


def _unblock(x, heads):
  """[heads * segments, l, d] -> [segments, l, heads, d]."""
  blocks, segment_len, dim = x.shape
  return jnp.moveaxis(x.reshape(heads, blocks // heads, segment_len, dim), 0, 2)


def _allowed(key_mask, heads, causal, segment_len):
  """A step's key mask [segments, l] (or None) -> bool mask broadcastable to
  [heads * segments, l, l], or None when everything is allowed."""
  allowed = None
  if key_mask is not None:
    segments = key_mask.shape[0]
    allowed = jnp.broadcast_to(key_mask[None, :, None, :],
                               (heads, segments, 1, segment_len))
    allowed = allowed.reshape(heads * segments, 1, segment_len)
  if causal:
    positions = jnp.arange(segment_len)
    lower = positions[:, None] >= positions[None, :]  # [queries, keys]
    allowed = lower if allowed is None else allowed & lower
  return allowed


def _step_forward(q, k, v, key_mask, causal):
  """One step: q, k, v [segments, l, heads, d] -> (out [segments, l, heads,
  d] float32 or wider, weights [heads * segments, l, l])."""
  heads = q.shape[2]
  scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  scores = jnp.einsum('bqd,bkd->bqk', _blocks(q * scale), _blocks(k),
                      preferred_element_type=score_dtype(q.dtype))
  weights = masked_softmax(scores, _allowed(key_mask, heads, causal,
                                            q.shape[1]))
  out = jnp.einsum('bqk,bkd->bqd', weights.astype(v.dtype), _blocks(v),
                   preferred_element_type=score_dtype(q.dtype))
  return _unblock(out, heads), weights


class _Layout(NamedTuple):
  """How a [batch, length] sequence splits into loop steps and a tail.

  Loop step i covers segments [start, start + step) of batch row
  i // steps_per_row, start = (i % steps_per_row) * step; the last
  `tail` (< segment_len) positions of every row form one short segment,
  handled after the loop as a step holding every row's tail."""
  batch: int
  segment_len: int
  full_segments: int  # per row
  step: int  # segments per loop step; divides full_segments
  tail: int

  @property
  def num_steps(self):
    return self.batch * self.full_segments // self.step if self.step else 0

  def origin(self, i):
    """Batch row and first position of loop step i."""
    steps_per_row = self.full_segments // self.step
    first_segment = (i % steps_per_row) * self.step
    return i // steps_per_row, first_segment * self.segment_len


def _layout(shape, segment_len, step_scores=None):
  batch, length, heads = shape[:3]
  full_segments, tail = divmod(length, segment_len)
  step = (_segments_per_step(full_segments, heads, segment_len, step_scores)
          if full_segments else 0)
  return _Layout(batch, segment_len, full_segments, step, tail)


def _read_step(x, layout, i):
  """Loop step i of x [batch, length, ...] -> [step, l, ...] (or None)."""
  if x is None:
    return None
  row, start = layout.origin(i)
  size = (1, layout.step * layout.segment_len, *x.shape[2:])
  part = jax.lax.dynamic_slice(x, (row, start) + (0,) * (x.ndim - 2), size)
  return part.reshape(layout.step, layout.segment_len, *x.shape[2:])


def _write(buffer, part, row, start):
  """buffer [batch, length, ...] with part [rows, n, ...] written in place
  from (row, start)."""
  origin = (row, start) + (0,) * (buffer.ndim - 2)
  return jax.lax.dynamic_update_slice(buffer, part.astype(buffer.dtype),
                                      origin)


def _write_step(buffer, part, layout, i):
  """buffer [batch, length, ...] with loop step i set to part [step, l, ...]."""
  return _write(buffer, part.reshape(1, -1, *part.shape[2:]),
                *layout.origin(i))


def _read_tail(x, layout, fill=0):
  """x [batch, length, ...] -> its tails [batch, l, ...], padded with fill."""
  start = layout.full_segments * layout.segment_len
  return pad_length(x[:, start:], layout.segment_len, fill)


def _write_tail(buffer, part, layout):
  """buffer [batch, length, ...] with its tails set from part [batch, l,
  ...]."""
  return _write(buffer, part[:, :layout.tail], 0,
                layout.full_segments * layout.segment_len)


def _tail_mask(mask, layout):
  """[batch, l] keys of the tail segment: real positions, not padding."""
  if mask is None:
    return jnp.broadcast_to(jnp.arange(layout.segment_len) < layout.tail,
                            (layout.batch, layout.segment_len))
  return _read_tail(mask, layout, False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def loop_attention(q, k, v, mask, segment_len, causal, levers):
  """`segment_attention`'s CPU path on checked inputs (mask bool or None),
  with this module's backward; `levers` (a Levers) as the labs vary them."""
  return _segment_attention_forward(q, k, v, mask, segment_len, causal,
                                    levers)[0]


def _segment_attention_forward(q, k, v, mask, segment_len, causal,
                               levers=Levers()):
  """-> (out in q's dtype, residuals (q, k, v, mask, loop weights
  [num_steps, heads * step, l, l] or None, tail weights or None))."""
  layout = _layout(q.shape, segment_len, levers.step_scores)
  out = jnp.zeros_like(q)
  weights = tail_weights = None
  if layout.num_steps:
    def step(out, i):
      step_q, step_k, step_v, step_mask = (
          _read_step(x, layout, i) for x in (q, k, v, mask))
      step_out, step_weights = _step_forward(step_q, step_k, step_v,
                                             step_mask, causal)
      return _write_step(out, step_out, layout, i), step_weights

    out, weights = jax.lax.scan(step, out, jnp.arange(layout.num_steps))
  if layout.tail:
    tail_q, tail_k, tail_v = (_read_tail(x, layout) for x in (q, k, v))
    tail_out, tail_weights = _step_forward(
        tail_q, tail_k, tail_v, _tail_mask(mask, layout), causal)
    out = _write_tail(out, tail_out, layout)
  return out, (q, k, v, mask, weights, tail_weights)


def _transposed(x, barrier=True):
  """[blocks, a, b] -> [blocks, b, a], materialised. A transpose of a step is
  cheap in cache, and the barrier stops XLA from folding it into the next
  dot, so that dot keeps the plain [m, k] @ [k, n] form, which XLA's CPU
  backend runs faster than one contracting its left operand's first axis.
  `barrier=False` leaves the folding to XLA (the lab's comparison)."""
  swapped = jnp.swapaxes(x, 1, 2)
  return jax.lax.optimization_barrier(swapped) if barrier else swapped


def _step_backward(q, k, v, d_out, weights, barrier=True):
  """One step's gradients, [segments, l, heads, d] each (float32 or wider),
  from its saved weights [heads * segments, queries, keys]; `barrier` as in
  `_transposed`."""
  heads = q.shape[2]
  wide = weights.dtype
  scale = 1.0 / math.sqrt(q.shape[-1])
  q, k, v, d_out = (_blocks(x).astype(wide) for x in (q, k, v, d_out))
  d_v = jnp.einsum('bkq,bqd->bkd', _transposed(weights, barrier), d_out)
  d_weights = jnp.einsum('bqd,bkd->bqk', d_out, v)
  # Softmax backward: p * (dp - sum_k p dp). The row sum is taken here, in
  # cache, so the forward's output need not be saved or read back.
  row = jnp.sum(weights * d_weights, axis=-1, keepdims=True)
  d_scores = weights * (d_weights - row) * scale
  d_q = jnp.einsum('bqk,bkd->bqd', d_scores, k)
  d_k = jnp.einsum('bkq,bqd->bkd', _transposed(d_scores, barrier), q)
  return tuple(_unblock(g, heads) for g in (d_q, d_k, d_v))


def _gradient_loop(step_backward, arrays, weights, layout):
  """Gradients with respect to arrays[:3] (q, k, v: [batch, length, heads,
  d]), zero outside the loop's steps and written in place step by step:
  step_backward(*(step i of each array), weights[i]) -> three [step, l,
  heads, d]."""
  grads = tuple(jnp.zeros_like(x) for x in arrays[:3])
  if not layout.num_steps:
    return grads

  def step(grads, i_and_weights):
    i, step_weights = i_and_weights
    step_grads = step_backward(
        *(_read_step(x, layout, i) for x in arrays), step_weights)
    return tuple(_write_step(g, s, layout, i)
                 for g, s in zip(grads, step_grads)), None

  return jax.lax.scan(step, grads, (jnp.arange(layout.num_steps), weights))[0]


def _segment_attention_backward(segment_len, causal, levers, residuals, d_out):
  del causal  # the weights already hold it
  q, k, v, mask, weights, tail_weights = residuals
  layout = _layout(q.shape, segment_len, levers.step_scores)
  step_backward = functools.partial(_step_backward,
                                    barrier=levers.transpose_barrier)
  grads = _gradient_loop(step_backward, (q, k, v, d_out), weights, layout)
  if layout.tail:
    tail_q, tail_k, tail_v, tail_d_out = (
        _read_tail(x, layout) for x in (q, k, v, d_out))
    tail_grads = step_backward(tail_q, tail_k, tail_v, tail_d_out,
                               tail_weights)
    grads = tuple(_write_tail(g, s, layout)
                  for g, s in zip(grads, tail_grads))
  return (*grads, None)  # the mask gets no gradient


loop_attention.defvjp(_segment_attention_forward,
                          _segment_attention_backward)


def segment_attention_weights(q: jax.Array, k: jax.Array, segment_len: int,
                              *, mask: Optional[jax.Array] = None,
                              causal: bool = False) -> jax.Array:
  """The attention weights `segment_attention` uses, for inspection.

  Args: as `segment_attention` (q, k: [batch, length, heads, head_dim]).

  Returns:
    [batch, num_segments, heads, segment_len (queries), segment_len (keys)]
    float32 (or wider) weights; rows of padding or key-less queries are zero.
  """
  segment_len = checks.integer(segment_len, 'segment_len')
  for name, x in (('q', q), ('k', k)):
    checks.rank(x, 4, name, '[batch, length, heads, head_dim]')
  checks.same_shape([('q', q.shape), ('k', k.shape)])
  checks.mask(mask, q.shape[:2])
  if mask is not None:
    mask = mask.astype(bool)
  return _segment_weights(q, k, segment_len, mask, causal)


def _segment_weights(q, k, segment_len, mask, causal):
  """The forward's own saved weights, regrouped per segment."""
  layout = _layout(q.shape, segment_len)
  heads = q.shape[2]
  _, (*_, weights, tail_weights) = _segment_attention_forward(
      q, k, k, mask, segment_len, causal)
  per_segment = []
  if weights is not None:  # [steps, heads * step, l, l], heads-major
    weights = weights.reshape(layout.batch, -1, heads, layout.step,
                              segment_len, segment_len)
    per_segment.append(jnp.swapaxes(weights, 2, 3).reshape(
        layout.batch, layout.full_segments, heads, segment_len, segment_len))
  if tail_weights is not None:  # [heads * batch, l, l]
    tail_weights = tail_weights.reshape(heads, layout.batch, 1, segment_len,
                                        segment_len)
    per_segment.append(jnp.moveaxis(tail_weights, 0, 2))
  return jnp.concatenate(per_segment, axis=1)

