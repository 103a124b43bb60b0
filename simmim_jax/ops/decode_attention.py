"""Pure functions on the decoding cache: what one new token reads and writes.

A layer's cache holds, per batch row, a fixed number of slots (segment_len
for segment attention, max_len for full attention); slot axis 1. `positions`
are [batch] int: the position of each row's token, so rows of one batch can
be at different positions (ragged prompts). Scores and softmax are float32
(or wider), as in the parallel pass, so cached decoding and the parallel
pass agree to float rounding.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from simmim_jax.ops.attention import cross_attention
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.segments import score_dtype


def write_slot(buffer: jax.Array, value: jax.Array, slot: jax.Array,
               where: Optional[jax.Array] = None) -> jax.Array:
  """buffer [batch, slots, ...] with buffer[b, slot[b]] = value[b].

  value: [batch, ...]; slot: [batch] int; where: optional [batch] bool, rows
  to write (the others are left as they are).
  """
  if where is not None:  # an out-of-range slot is dropped
    slot = jnp.where(where, slot, buffer.shape[1])
  # A scatter, not a select over every slot: a donated or loop-carried
  # buffer is updated in place, O(1) per step however long the cache.
  rows = jnp.arange(buffer.shape[0])
  return buffer.at[rows, slot].set(value.astype(buffer.dtype), mode='drop')


def read_window(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """x [batch, length, ...] -> x[b, start[b]:start[b] + size] for every row,
  [batch, size, ...]; positions past the end read zeros."""
  x = jnp.pad(x, [(0, 0), (0, size)] + [(0, 0)] * (x.ndim - 2))
  def row(x_row, start_row):
    return jax.lax.dynamic_slice_in_dim(x_row, start_row, size, axis=0)
  return jax.vmap(row)(x, start)


def cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array,
                     allowed: jax.Array) -> jax.Array:
  """One query per row over the cached keys, as the parallel attention does.

  Args:
    q: [batch, heads, head_dim], the new token's queries.
    keys, values: [batch, slots, heads, head_dim], the cache (already holding
      the new token's key and value).
    allowed: [batch, slots] bool, the slots this query may read.

  Returns: [batch, heads, head_dim] in q's dtype.
  """
  return cross_attention(q[:, None], keys, values, key_mask=allowed)[:, 0]


def state_query(state: jax.Array, state_keys: jax.Array,
                state_values: jax.Array, w_q: jax.Array,
                num_finished: jax.Array) -> jax.Array:
  """A finished segment's state attends to the earlier segments' states:
  s~ = s + sum_{j < num_finished} softmax_j((s w_q).k_j / sqrt(key_dim)) v_j,
  the causal `segment_states.segment_state_attention` for one state per row.

  Args:
    state: [batch, dim], the state of the segment finishing now.
    state_keys: [batch, slots, key_dim] (s_j w_k of finished segments j).
    state_values: [batch, slots, dim] (s_j w_v).
    w_q: [dim, key_dim].
    num_finished: [batch] int, how many earlier segments each row has.

  Returns: s~ [batch, dim] in state's dtype.
  """
  query = state @ w_q.astype(state.dtype)
  wide = score_dtype(state.dtype)
  scores = jnp.einsum('bk,bjk->bj', query, state_keys,
                      preferred_element_type=wide) / math.sqrt(w_q.shape[1])
  allowed = jnp.arange(state_keys.shape[1])[None, :] < num_finished[:, None]
  weights = masked_softmax(scores, allowed).astype(state_values.dtype)
  update = jnp.einsum('bj,bjd->bd', weights, state_values,
                      preferred_element_type=wide)
  return (state.astype(wide) + update).astype(state.dtype)
