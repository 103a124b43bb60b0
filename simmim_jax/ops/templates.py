"""Attention templates: per-head template queries whose attention is shared.

Head h has K templates a_{h,k} (templates: [heads, num_templates, head_dim]).
Query i is assigned its nearest template c(i) (squared L2) and gets
  out_{i,h} = sum_j softmax_j(a_{h,c(i)} . k_j / sqrt(head_dim)) v_j
over the real keys j of the sequence (or of its segment). The K outputs cost
O(K * length * head_dim) and are gathered per query: no [length, length]
array; kept as template memory, they answer a new query in O(K * head_dim). The
causal variant keeps every template's running prefix output instead.
q, k, v: [batch, length, heads, head_dim]; assignments: [batch, length, heads]
int in [0, K); mask: [batch, length] bool, True = real token. Scores and
softmax are float32 (wider for float64 inputs); outputs have v's dtype.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax import checks
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.segments import merge_segments
from simmim_jax.ops.segments import score_dtype
from simmim_jax.ops.segments import segment_key_mask
from simmim_jax.ops.segments import split_segments

_LAYOUT = '[batch, length, heads, head_dim]'


def check_templates(templates, name='templates') -> tuple[int, int, int]:
  checks.rank(templates, 3, name, '[heads, num_templates, head_dim]')
  heads, num_templates, head_dim = templates.shape
  if num_templates <= 0:
    raise ValueError(
        f'{name} must hold at least one template per head '
        f'(num_templates > 0), got shape {tuple(templates.shape)}')
  return heads, num_templates, head_dim


def check_against_templates(x, name, templates) -> None:
  """x: [batch, length, heads, head_dim] must match the templates' heads."""
  check_templates(templates)
  checks.rank(x, 4, name, _LAYOUT)
  heads, _, head_dim = templates.shape
  if tuple(x.shape[2:]) != (heads, head_dim):
    raise ValueError(
        f'{name} has (heads, head_dim) {tuple(x.shape[2:])} but templates '
        f'have {(heads, head_dim)}; they must match')


def check_keys(templates, k, v, mask) -> None:
  check_against_templates(k, 'k', templates)
  checks.rank(v, 4, 'v', _LAYOUT)
  checks.same_shape([('k', k.shape), ('v', v.shape)])
  checks.mask(mask, k.shape[:2])


def check_assignments(assignments, shape, num_templates) -> None:
  if tuple(np.shape(assignments)) != tuple(shape):
    raise ValueError(
        f'assignments must have shape {tuple(shape)} [batch, length, heads], '
        f'got {tuple(np.shape(assignments))}')
  dtype = np.dtype(assignments.dtype)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f'assignments must be integer, got dtype {dtype}')
  # Under jit the values are unknown: ids >= K then gather NaN, -1 wraps.
  if checks.is_concrete(assignments) and np.size(assignments):
    values = np.asarray(assignments)
    bad = values[(values < 0) | (values >= num_templates)]
    if bad.size:
      raise ValueError(f'assignments contain {bad[0]}, outside [0, '
                       f'num_templates={num_templates})')


def check_sizes(cluster_sizes, heads, num_templates) -> None:
  if tuple(np.shape(cluster_sizes)) != (heads, num_templates):
    raise ValueError(
        f'cluster_sizes must have shape {(heads, num_templates)} [heads, '
        f'num_templates], got {tuple(np.shape(cluster_sizes))}')


def assign_templates(queries: jax.Array, templates: jax.Array) -> jax.Array:
  """Index of each query's nearest template of its head (squared L2).

  Args: queries [batch, length, heads, head_dim]; templates [heads,
    num_templates, head_dim].

  Returns: int32 [batch, length, heads]; ties go to the lowest index.
  """
  check_against_templates(queries, 'queries', templates)
  dtype = score_dtype(jnp.result_type(queries.dtype, templates.dtype))
  q, a = queries.astype(dtype), templates.astype(dtype)
  # Full precision: on TPU the default bf16 passes would flip near-ties.
  dots = jnp.einsum('blhd,hkd->blhk', q, a,
                    precision=jax.lax.Precision.HIGHEST)
  distances = (jnp.sum(q * q, axis=-1, keepdims=True) - 2 * dots
               + jnp.sum(a * a, axis=-1)[None, None])
  return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def template_outputs(templates: jax.Array, k: jax.Array, v: jax.Array, *,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """Every template's attention output over the whole sequence: the
  template memory of a fixed context (see `query_template_cache`).

  Args: templates [heads, num_templates, head_dim]; k, v [batch, length,
    heads, head_dim]; mask optional [batch, length] bool, True = real key.

  Returns: [batch, heads, num_templates, head_dim] in v's dtype; zeros for a
    sequence without real keys.
  """
  check_keys(templates, k, v, mask)
  # The whole sequence as one segment.
  key_mask = None if mask is None else mask.astype(bool)[:, None]
  return _outputs(templates, k[:, None], v[:, None], key_mask)[:, 0]


def segment_template_outputs(templates: jax.Array, k: jax.Array, v: jax.Array,
                             segment_len: int, *,
                             mask: Optional[jax.Array] = None) -> jax.Array:
  """Every template's attention output within each segment of `segment_len`
  positions (the tail is padded internally and masked: any length works).

  Args: as `template_outputs`, plus `segment_len` (positive int).

  Returns:
    [batch, num_segments, heads, num_templates, head_dim] in v's dtype; zeros
    for a segment without real keys.
  """
  segment_len = checks.integer(segment_len, 'segment_len')
  check_keys(templates, k, v, mask)
  batch, length = k.shape[:2]
  key_mask = segment_key_mask(mask, batch, length, segment_len)
  return _outputs(templates, split_segments(k, segment_len),
                  split_segments(v, segment_len), key_mask)


def _outputs(templates, k, v, key_mask):
  """k, v: [batch, m, l, heads, d]; key_mask: [batch, m, l] or None.
  Returns [batch, m, heads, K, d] in v's dtype."""
  wide = score_dtype(jnp.result_type(templates.dtype, k.dtype))
  # Scaling the templates (K*d multiplies) is cheaper than the scores.
  scale = jnp.asarray(1.0 / math.sqrt(templates.shape[-1]), templates.dtype)
  scores = jnp.einsum('hkd,bmshd->bmhks', templates * scale, k,
                      preferred_element_type=wide)
  allowed = None if key_mask is None else key_mask[:, :, None, None, :]
  weights = masked_softmax(scores, allowed).astype(v.dtype)
  out = jnp.einsum('bmhks,bmshd->bmhkd', weights, v,
                   preferred_element_type=score_dtype(v.dtype))
  return out.astype(v.dtype)


def causal_template_outputs(templates: jax.Array, k: jax.Array, v: jax.Array,
                            *, mask: Optional[jax.Array] = None,
                            segment_len: Optional[int] = None) -> jax.Array:
  """Every template's causal attention output at every position:
    out[b, i, h, c] = sum_{j <= i} softmax_j(a_{h,c} . k_j / sqrt(d)) v_j
  over real keys j (of i's own segment when `segment_len` is given).

  A template's prefix softmax is an online-softmax running (max, sum,
  weighted sum) triple, combined by `lax.associative_scan`: O(K * length *
  head_dim) per head, no [length, length] array. The same triple, kept per
  template, is a constant-size decoding cache.

  Args: templates [heads, K, head_dim]; k, v [batch, length, heads,
    head_dim]; mask optional [batch, length] bool; segment_len optional
    positive int.

  Returns: [batch, length, heads, K, head_dim] in v's dtype; zeros where no
    real key precedes.
  """
  check_keys(templates, k, v, mask)
  batch, length = k.shape[:2]
  if segment_len is None:
    key_mask = None if mask is None else mask.astype(bool)[:, None]
    k, v = k[:, None], v[:, None]
  else:
    segment_len = checks.integer(segment_len, 'segment_len')
    key_mask = segment_key_mask(mask, batch, length, segment_len)
    k, v = split_segments(k, segment_len), split_segments(v, segment_len)
  scores = _template_scores(templates, k)  # [batch, m, l, heads, K]
  wide = scores.dtype
  real = (jnp.ones(scores.shape[:3], bool) if key_mask is None
          else key_mask)[..., None, None]
  # A finite floor, not -inf: two padded prefixes combine without inf - inf.
  floor = jnp.finfo(wide).min
  running_max = jnp.where(real, scores, floor)
  total = jnp.broadcast_to(real, scores.shape).astype(wide)
  weighted = total[..., None] * v.astype(wide)[:, :, :, :, None, :]

  _, total, weighted = jax.lax.associative_scan(
      _combine, (running_max, total, weighted), axis=2)
  out = weighted / jnp.where(total > 0, total, 1.0)[..., None]
  return merge_segments(out, length).astype(v.dtype)


def _combine(left, right):
  """Two online-softmax (max, total, weighted) triples -> the triple of both:
  totals [...], weighted sums [..., d]."""
  max_l, total_l, weighted_l = left
  max_r, total_r, weighted_r = right
  new_max = jnp.maximum(max_l, max_r)
  scale_l, scale_r = jnp.exp(max_l - new_max), jnp.exp(max_r - new_max)
  return (new_max, total_l * scale_l + total_r * scale_r,
          weighted_l * scale_l[..., None] + weighted_r * scale_r[..., None])


def _template_scores(templates, k):
  """[heads, K, d] . [batch, ..., heads, d] / sqrt(d) -> [batch, ..., heads,
  K] in the score dtype."""
  wide = score_dtype(jnp.result_type(templates.dtype, k.dtype))
  scale = jnp.asarray(1.0 / math.sqrt(templates.shape[-1]), templates.dtype)
  return jnp.einsum('hkd,b...hd->b...hk', templates * scale, k,
                    preferred_element_type=wide)


def causal_template_state(templates: jax.Array, k: jax.Array, v: jax.Array,
                          *, start: jax.Array, stop: jax.Array):
  """Every template's running softmax over the keys [start, stop) of each
  row: the decoding cache of causal template attention, O(K * head_dim) per
  head whatever the context length.

  Args: templates [heads, K, head_dim]; k, v [batch, length, heads,
    head_dim]; start, stop [batch] int.

  Returns: (running_max [batch, heads, K], total [batch, heads, K],
    weighted [batch, heads, K, head_dim]), float32 or wider; an empty range
    gives the empty triple (floor, 0, 0), which `causal_template_step`
    continues like any other.
  """
  check_keys(templates, k, v, None)
  scores = _template_scores(templates, k)  # [batch, length, heads, K]
  position = jnp.arange(k.shape[1])[None, :]
  real = ((position >= start[:, None]) & (position < stop[:, None]))
  real = real[:, :, None, None]
  floor = jnp.finfo(scores.dtype).min
  running_max = jnp.max(jnp.where(real, scores, floor), axis=1)
  weights = jnp.where(real, jnp.exp(scores - running_max[:, None]), 0.0)
  weighted = jnp.einsum('blhk,blhd->bhkd', weights, v.astype(weights.dtype))
  return running_max, jnp.sum(weights, axis=1), weighted


def causal_template_step(templates: jax.Array, state, k: jax.Array,
                         v: jax.Array, *, reset: jax.Array):
  """The running state after one more key per row.

  Args: templates [heads, K, head_dim]; state as `causal_template_state`;
    k, v [batch, heads, head_dim], the new token's key and value; reset
    [batch] bool: start from the empty state (a row's new segment).

  Returns: (new state, outputs [batch, heads, K, head_dim] in v's dtype),
    the outputs of every template over the keys so far.
  """
  scores = _template_scores(templates, k)  # [batch, heads, K]
  running_max, total, weighted = state
  empty = reset[:, None, None]
  running_max = jnp.where(empty, jnp.finfo(scores.dtype).min, running_max)
  total = jnp.where(empty, 0.0, total)
  weighted = jnp.where(empty[..., None], 0.0, weighted)
  new = (scores, jnp.ones_like(scores),
         jnp.broadcast_to(v.astype(scores.dtype)[:, :, None, :],
                          weighted.shape))
  state = _combine((running_max, total, weighted), new)
  _, total, weighted = state
  out = weighted / jnp.where(total > 0, total, 1.0)[..., None]
  return state, out.astype(v.dtype)


def causal_template_attention(templates: jax.Array, assignments: jax.Array,
                              k: jax.Array, v: jax.Array, *,
                              mask: Optional[jax.Array] = None,
                              segment_len: Optional[int] = None) -> jax.Array:
  """Causal template attention: query i gets its template's output over the
  real keys j <= i (within its segment when `segment_len` is given).

  Args: as `template_attention`, plus optional `segment_len`.

  Returns: [batch, length, heads, head_dim] in v's dtype.
  """
  check_keys(templates, k, v, mask)
  check_assignments(assignments, k.shape[:3], templates.shape[1])
  outputs = causal_template_outputs(templates, k, v, mask=mask,
                                    segment_len=segment_len)
  return jnp.take_along_axis(outputs, assignments[..., None, None],
                             axis=3)[:, :, :, 0]


def _gather(outputs, assignments, segment_len=None):
  """Outputs [batch, (m,) heads, K, d] -> [batch, length, heads, d]; with
  `segment_len`, position t reads segment t // segment_len."""
  if segment_len is None:
    outputs, index = outputs[:, None], assignments[:, None]
  else:
    index = split_segments(assignments, segment_len)  # [batch, m, l, heads]
    outputs = outputs[:, :index.shape[1]]
  index = jnp.swapaxes(index, 2, 3)[..., None]  # [batch, m, heads, l, 1]
  gathered = jnp.swapaxes(jnp.take_along_axis(outputs, index, axis=3), 2, 3)
  return merge_segments(gathered, assignments.shape[1])


def template_attention(templates: jax.Array, assignments: jax.Array,
                       k: jax.Array, v: jax.Array, *,
                       mask: Optional[jax.Array] = None) -> jax.Array:
  """Each query's output is its assigned template's attention output.

  Args:
    templates: [heads, num_templates, head_dim]; k, v: [batch, length, heads,
      head_dim]; mask: optional [batch, length] bool, True = real key.
    assignments: [batch, length, heads] int in [0, num_templates), e.g.
      `assign_templates(q, templates)`.

  Returns: [batch, length, heads, head_dim] in v's dtype.
  """
  check_keys(templates, k, v, mask)
  check_assignments(assignments, k.shape[:3], templates.shape[1])
  return _gather(template_outputs(templates, k, v, mask=mask), assignments)


def segment_template_attention(templates: jax.Array, assignments: jax.Array,
                               k: jax.Array, v: jax.Array, segment_len: int, *,
                               mask: Optional[jax.Array] = None) -> jax.Array:
  """`template_attention` restricted to segments: a drop-in for the
  intra-segment attention of an SMI block.

  Position t gets its template's output over the real keys of its own segment
  t // segment_len. Args and result as `template_attention`, plus
  `segment_len` (positive int; any length).
  """
  segment_len = checks.integer(segment_len, 'segment_len')
  check_keys(templates, k, v, mask)
  check_assignments(assignments, k.shape[:3], templates.shape[1])
  outputs = segment_template_outputs(templates, k, v, segment_len, mask=mask)
  return _gather(outputs, assignments, segment_len)


def query_template_cache(cache: jax.Array, queries: jax.Array,
                         templates: jax.Array, *,
                         segment_len: Optional[int] = None) -> jax.Array:
  """Answers queries from template memory (a context's stored template
  outputs) in O(K * head_dim) each, bit for bit as `template_attention` (or
  `segment_template_attention`) with `assign_templates(queries, templates)`:
  the same ops run. (Template memory, not a decoding cache: the name is
  kept for compatibility.)

  Args:
    cache: the template memory: `template_outputs` [batch, heads, K,
      head_dim], or with segment_len `segment_template_outputs` [batch,
      num_segments, heads, K, head_dim].
    queries: [batch, length, heads, head_dim]; with segment_len, position t
      reads segment t // segment_len, which the memory must hold.
    templates: [heads, K, head_dim], the ones the memory was built with.

  Returns: [batch, length, heads, head_dim] in the memory's dtype.
  """
  check_against_templates(queries, 'queries', templates)
  batch, length = queries.shape[:2]
  expected = (batch, *templates.shape)
  if segment_len is not None:
    segment_len = checks.integer(segment_len, 'segment_len')
    needed = -(-length // segment_len)
    held = np.shape(cache)[1] if np.ndim(cache) == 5 else needed
    # A longer context's memory serves its prefix; a shorter one cannot.
    expected = (batch, max(held, needed), *templates.shape)
  if tuple(np.shape(cache)) != expected:
    raise ValueError(
        f'cache must have shape {expected} for queries {tuple(queries.shape)} '
        f'and templates {tuple(templates.shape)}, got {tuple(np.shape(cache))}')
  return _gather(cache, assign_templates(queries, templates), segment_len)
