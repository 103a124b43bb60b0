"""What every attention op here shares: the masked float32 softmax, the
cut of a sequence into segments, and the masks of segments and their keys.

Shapes: x [batch, length, ...]; mask [batch, length] bool, True = a real
token.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from simmim_jax import checks


def masked_softmax(scores: jax.Array,
                   allowed: Optional[jax.Array]) -> jax.Array:
  """Softmax over the last axis, restricted to `allowed` entries.

  Args:
    scores: [..., keys] float logits (float32 or wider).
    allowed: bool, broadcastable to `scores`, or None for no restriction.

  Returns:
    weights of `scores`' shape and dtype; a row with no allowed entry is all
    zeros (not NaN), so its attention output is zero and its gradient finite.
  """
  if allowed is None:
    return jax.nn.softmax(scores, axis=-1)
  # A finite fill keeps exp() and its gradient NaN-free on empty rows.
  scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.where(allowed, jnp.exp(scores - row_max), 0.0)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return weights / jnp.where(total > 0, total, 1.0)


def score_dtype(dtype) -> jnp.dtype:
  """float32, or wider when the inputs are (bf16 and f16 scores stay f32)."""
  return jnp.promote_types(dtype, jnp.float32)


def check_qkv(q, k, v):
  for name, x in (('q', q), ('k', k), ('v', v)):
    checks.rank(x, 4, name, '[batch, length, heads, head_dim]')
  checks.same_shape([('q', q.shape), ('k', k.shape), ('v', v.shape)])


def split_segments(x: jax.Array, segment_len: int, fill=0) -> jax.Array:
  """[batch, length, ...] -> [batch, num_segments, segment_len, ...].

  The tail is padded with `fill` so length need not divide segment_len.
  """
  num_segments = -(-x.shape[1] // segment_len)
  x = pad_length(x, num_segments * segment_len, fill)
  return x.reshape(x.shape[0], num_segments, segment_len, *x.shape[2:])


def merge_segments(x: jax.Array, length: int) -> jax.Array:
  """[batch, num_segments, segment_len, ...] -> [batch, length, ...]."""
  batch, num_segments, segment_len = x.shape[:3]
  x = x.reshape(batch, num_segments * segment_len, *x.shape[3:])
  return x[:, :length]


def segment_mask(mask: Optional[jax.Array], batch: int, length: int,
                 segment_len: int) -> Optional[jax.Array]:
  """[batch, length] token mask -> [batch, num_segments] segment mask.

  A segment is real when any of its tokens is real; internal tail padding is
  not real. Returns None when every segment is real and no mask was given.
  """
  key_mask = segment_key_mask(mask, batch, length, segment_len)
  return None if key_mask is None else jnp.any(key_mask, axis=2)



def segment_key_mask(mask: Optional[jax.Array], batch: int, length: int,
                     segment_len: int) -> Optional[jax.Array]:
  """[batch, num_segments, segment_len] validity of each key, or None if all."""
  if mask is None:
    if length % segment_len == 0:
      return None
    mask = jnp.ones((batch, length), bool)
  return split_segments(mask.astype(bool), segment_len, False)



def pad_length(x, length, fill=0):
  """[batch, n, ...] -> [batch, length, ...], the tail filled with `fill`."""
  if x.shape[1] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, length - x.shape[1])
  return jnp.pad(x, widths, constant_values=fill)

