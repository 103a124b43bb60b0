"""Segment states as pure functions: states attend to states; tokens read them.

A sequence cut into m segments gives k states per segment (k =
`states_per_segment`, 1 in the seed's equation), m * k in all, laid out
segment-major: state t belongs to segment t // k. The exclusions and the
causality below are by segment: two states of one segment never read each
other (both have seen the whole segment).

  states: [batch, num_states, dim], num_states = num_segments * k
  mask:   [batch, num_states] bool, True = the state of a real segment.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from simmim_jax import checks
from simmim_jax.ops.attention import masked_attention
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.segments import score_dtype
from simmim_jax.ops.segments import segment_key_mask
from simmim_jax.ops.segments import split_segments


def pick_states(x: jax.Array, segment_len: int, states_per_segment: int = 1,
                *, mask: Optional[jax.Array] = None, causal: bool = False
                ) -> tuple[jax.Array, Optional[jax.Array]]:
  """The vectors that become states, and which of them are real tokens.

  Each segment's first k vectors, or, causal, its last k (the ones that have
  seen the whole segment); positions past the end are zeros.

  Args:
    x: [batch, length, dim].
    mask: optional [batch, length] bool, True = real token.

  Returns: (states [batch, num_segments * k, dim], state mask [batch,
  num_segments * k] bool, or None when every state is a real token).
  """
  batch, length, dim = x.shape
  k = states_per_segment
  if k > segment_len:
    raise ValueError(f'states_per_segment ({k}) exceeds segment_len '
                     f'({segment_len})')
  pick = (slice(segment_len - k, None) if causal else slice(None, k))
  segments = split_segments(x, segment_len)
  states = segments[:, :, pick].reshape(batch, -1, dim)
  token_mask = segment_key_mask(mask, batch, length, segment_len)
  if token_mask is None:
    return states, None
  return states, token_mask[:, :, pick].reshape(batch, -1)


def segment_state_attention(states: jax.Array, w_q: jax.Array, w_k: jax.Array,
                            w_v: jax.Array, *, mask: Optional[jax.Array] = None,
                            causal: bool = False, exclude_self: bool = True,
                            states_per_segment: int = 1) -> jax.Array:
  """Each segment state attends to the other segments' states.

    new_i = s_i + sum_{j allowed} softmax_j((s_i w_q).(s_j w_k) / sqrt(key_dim))
                                   (s_j w_v)
  where j is allowed when mask_j, seg(j) != seg(i) (unless
  `exclude_self=False`), and, with `causal`, seg(j) < seg(i) (causal always
  excludes i's own segment: its states have seen segment i's future); seg(t)
  = t // states_per_segment. With no allowed j, new_i = s_i.

  Args:
    states: [batch, num_states, dim].
    w_q, w_k: [dim, key_dim].
    w_v: [dim, dim].
    mask: optional [batch, num_states] bool, True = a real segment's state.
    causal: attend to earlier segments only.
    exclude_self: drop seg(j) == seg(i) (the equation's default); False is an
      ablation.
    states_per_segment: k, the states each segment contributes; num_states
      must be a multiple of it.

  Returns:
    [batch, num_states, dim] in the states' dtype.
  """
  _check_states(states, w_q, w_k, mask, states_per_segment)
  dim = states.shape[2]
  checks.rank(w_v, 2, 'w_v', '[dim, dim]')
  if w_v.shape != (dim, dim):
    raise ValueError(f'w_v must have shape {(dim, dim)}, got {w_v.shape}')
  values = states @ w_v.astype(states.dtype)
  weights = _state_weights(states, w_q, w_k, mask, causal, exclude_self,
                           states_per_segment).astype(values.dtype)
  wide = score_dtype(states.dtype)
  update = jnp.einsum('bij,bjd->bid', weights, values,
                      preferred_element_type=wide)
  return (states.astype(wide) + update).astype(states.dtype)


def segment_state_weights(states: jax.Array, w_q: jax.Array, w_k: jax.Array,
                          *, mask: Optional[jax.Array] = None,
                          causal: bool = False, exclude_self: bool = True,
                          states_per_segment: int = 1) -> jax.Array:
  """The [batch, num_states, num_states] weights (row i: state i's
  attention over states j) that `segment_state_attention` uses."""
  _check_states(states, w_q, w_k, mask, states_per_segment)
  return _state_weights(states, w_q, w_k, mask, causal, exclude_self,
                        states_per_segment)


def state_readout(q: jax.Array, keys: jax.Array, values: jax.Array, *,
                  segment_len: int, states_per_segment: int = 1,
                  mask: Optional[jax.Array] = None,
                  causal: bool = False) -> jax.Array:
  """Every token attends over the segment states it may read.

  Token t reads state s when mask_s and, with `causal`, seg(s) < t //
  segment_len (states of finished segments only); without, every real
  state. O(length * num_states * dim), against O(length^2 * dim) for full
  attention.

  Args:
    q: [batch, length, heads, head_dim], the tokens' queries.
    keys, values: [batch, num_states, heads, head_dim], from the states.
    segment_len: tokens per segment.
    states_per_segment: k; num_states must be a multiple of it.
    mask: optional [batch, num_states] bool, True = a state to read.
    causal: read earlier segments' states only.

  Returns: [batch, length, heads, head_dim] in q's dtype; a token with no
  state to read (causal segment 0) gets zeros.
  """
  checks.rank(q, 4, 'q', '[batch, length, heads, head_dim]')
  checks.rank(keys, 4, 'keys', '[batch, num_states, heads, head_dim]')
  if (keys.shape != values.shape or keys.shape[0] != q.shape[0]
      or keys.shape[2:] != q.shape[2:]):
    raise ValueError(
        f'keys and values must be [batch, num_states, heads, head_dim] with '
        f"q's batch, heads and head_dim {q.shape}; got keys {keys.shape}, "
        f'values {values.shape}')
  checks.integer(segment_len, 'segment_len')
  _check_k(keys.shape[1], states_per_segment)
  checks.mask(mask, keys.shape[:2])
  allowed = None
  if causal:
    token_segment = jnp.arange(q.shape[1]) // segment_len
    state_segment = jnp.arange(keys.shape[1]) // states_per_segment
    allowed = (state_segment[None, :] < token_segment[:, None])[None, None]
  if mask is not None:
    key_mask = mask.astype(bool)[:, None, None, :]
    allowed = key_mask if allowed is None else allowed & key_mask
  return masked_attention(q, keys, values, allowed)


def _check_k(num_states, states_per_segment):
  checks.integer(states_per_segment, 'states_per_segment')
  if num_states % states_per_segment:
    raise ValueError(f'{num_states} states are not a whole number of '
                     f'segments of states_per_segment={states_per_segment}')


def _check_states(states, w_q, w_k, mask, states_per_segment):
  checks.rank(states, 3, 'states', '[batch, num_states, dim]')
  checks.rank(w_q, 2, 'w_q', '[dim, key_dim]')
  checks.rank(w_k, 2, 'w_k', '[dim, key_dim]')
  dim = states.shape[2]
  if w_q.shape[0] != dim or w_k.shape[0] != dim:
    raise ValueError(
        f'w_q {w_q.shape} and w_k {w_k.shape} must have {dim} rows to match '
        f'states {states.shape}')
  checks.same_shape([('w_q', w_q.shape), ('w_k', w_k.shape)])
  checks.mask(mask, states.shape[:2])
  _check_k(states.shape[1], states_per_segment)


def _state_weights(states, w_q, w_k, mask, causal, exclude_self,
                   states_per_segment):
  queries = states @ w_q.astype(states.dtype)
  keys = states @ w_k.astype(states.dtype)
  scores = jnp.einsum('bik,bjk->bij', queries, keys,
                      preferred_element_type=score_dtype(states.dtype))
  scores = scores / math.sqrt(w_q.shape[1])
  segment = jnp.arange(states.shape[1]) // states_per_segment
  if causal:
    allowed = segment[None, :] < segment[:, None]
  elif exclude_self:
    allowed = segment[None, :] != segment[:, None]
  else:
    allowed = jnp.ones((states.shape[1],) * 2, bool)
  allowed = allowed[None]  # [1, queries, keys]
  if mask is not None:
    allowed = allowed & mask.astype(bool)[:, None, :]
  return masked_softmax(scores, allowed)
