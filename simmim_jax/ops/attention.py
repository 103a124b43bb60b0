"""Attention as pure functions: segment, full and cross attention.

Shapes follow one convention throughout:
  q, k, v: [batch, length, heads, head_dim]
  mask:    [batch, length] bool, True = real token.
Scores and the softmax are computed in float32 (float64 for float64 inputs)
whatever the input dtype; the output has the dtype of `q`. Which kernel runs
is `implementation`'s choice: the CPU loop (segment_loop.py), XLA, or the
vendor kernels (attention_kernels.py).
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from simmim_jax import checks
from simmim_jax.ops import attention_kernels
from simmim_jax.ops.segment_loop import Levers
from simmim_jax.ops.segment_loop import loop_attention
from simmim_jax.ops.segments import check_qkv
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.segments import merge_segments
from simmim_jax.ops.segments import score_dtype
from simmim_jax.ops.segments import segment_key_mask
from simmim_jax.ops.segments import split_segments


def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      segment_len: int, *, mask: Optional[jax.Array] = None,
                      causal: bool = False,
                      implementation: Optional[str] = None) -> jax.Array:
  """Self-attention restricted to segments of `segment_len` positions.

  Position t belongs to segment t // segment_len and attends only to the real
  keys of its own segment (and only keys <= t when `causal`), with scores
  q.k / sqrt(head_dim). No [length, length] matrix exists, so cost is
  O(length * segment_len * head_dim) per head.

  Args:
    q, k, v: [batch, length, heads, head_dim]; any length (a last, shorter
      segment is computed on its own, without padding the inputs).
    segment_len: positive int.
    mask: optional [batch, length] bool, True = real token.
    causal: restrict keys to positions <= the query's.
    implementation: None picks the fastest for the backend and dtype: the
      loop below on CPU, cuDNN flash attention on GPU for bf16/fp16, splash
      attention on TPU when 128 divides segment_len, else 'xla' (the
      segments as a batch of small dense attentions, autodiff backward).
      'loop', 'xla', 'cudnn' and 'splash' force one; a path that cannot
      take the inputs raises ValueError. 'cudnn' reads the mask as lengths:
      real tokens first in each row (attention_kernels.py).

  Returns:
    [batch, length, heads, head_dim] in q's dtype; a query with no allowed key
    gives zeros.
  """
  segment_len = checks.integer(segment_len, 'segment_len')
  check_qkv(q, k, v)
  checks.mask(mask, q.shape[:2])
  if mask is not None:
    mask = mask.astype(bool)
  path = attention_kernels.choose_implementation(
      implementation, dtype=q.dtype, head_dim=q.shape[-1],
      segment_len=segment_len)
  if path == 'xla':
    return _xla_segment_attention(q, k, v, mask, segment_len, causal)
  if path == 'cudnn':
    return attention_kernels.cudnn_segment_attention(q, k, v, mask,
                                                     segment_len, causal)
  if path == 'splash':
    return attention_kernels.splash_segment_attention(q, k, v, mask,
                                                      segment_len, causal)
  return loop_attention(q, k, v, mask, segment_len, causal, Levers())


def _xla_segment_attention(q, k, v, mask, segment_len, causal):
  """The segments as a batch of dense attentions, [batch * num_segments,
  segment_len, ...], differentiated by autodiff."""
  batch, length = q.shape[:2]
  key_mask = segment_key_mask(mask, batch, length, segment_len)
  allowed = None if key_mask is None else key_mask.reshape(
      -1, 1, 1, segment_len)
  if causal:
    lower = jnp.tril(jnp.ones((segment_len, segment_len), bool))
    allowed = lower if allowed is None else allowed & lower

  def cut(x):
    return split_segments(x, segment_len).reshape(-1, segment_len,
                                                  *x.shape[2:])

  out = masked_attention(cut(q), cut(k), cut(v), allowed)
  return merge_segments(out.reshape(batch, -1, *out.shape[1:]), length)



def full_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                   mask: Optional[jax.Array] = None, causal: bool = False,
                   implementation: Optional[str] = None) -> jax.Array:
  """Ordinary attention over the whole sequence (the O(length^2) baseline).

  Same shapes, masking and numbers as `segment_attention` with a single
  segment, and the same `implementation` choices, so the transformer
  baseline runs on the same kernels; a wholly masked row gives zeros.
  """
  check_qkv(q, k, v)
  batch, length = q.shape[:2]
  checks.mask(mask, (batch, length))
  if mask is not None:
    mask = mask.astype(bool)
  path = attention_kernels.choose_implementation(
      implementation, dtype=q.dtype, head_dim=q.shape[-1], segment_len=None)
  if path == 'cudnn':
    return attention_kernels.cudnn_segment_attention(q, k, v, mask, length,
                                                     causal)
  if path == 'splash':
    return attention_kernels.splash_segment_attention(q, k, v, mask, None,
                                                      causal)
  if path == 'xla':
    return _xla_segment_attention(q, k, v, mask, length, causal)
  # The segment kernel's loop over rows is 1.6-1.9x faster than XLA's
  # dot_product_attention on CPU, which builds [batch, heads, length,
  # length] in a transposed layout (BENCHMARKS.md, "Full attention on CPU").
  return loop_attention(q, k, v, mask, length, causal, Levers())


def cross_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    key_mask: Optional[jax.Array] = None) -> jax.Array:
  """Every query over every key of another sequence (decoder over encoder).

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, kv_len, heads, head_dim].
    key_mask: optional [batch, kv_len] bool, True = a key to read.

  Returns: [batch, q_len, heads, head_dim] in q's dtype. Scores and softmax
  are float32 (or wider); a row without keys gets zeros. One query or many
  give the same numbers, so cached decoding matches the parallel pass.
  """
  checks.rank(q, 4, 'q', '[batch, q_len, heads, head_dim]')
  checks.rank(k, 4, 'k', '[batch, kv_len, heads, head_dim]')
  if (k.shape != v.shape or k.shape[0] != q.shape[0]
      or k.shape[2:] != q.shape[2:]):
    raise ValueError(f'k and v must be [batch, kv_len, heads, head_dim] with '
                     f"q's batch, heads and head_dim {q.shape}; got k "
                     f'{k.shape}, v {v.shape}')
  checks.mask(key_mask, k.shape[:2], 'key_mask')
  allowed = None if key_mask is None else key_mask.astype(bool)[:, None,
                                                                 None, :]
  return masked_attention(q, k, v, allowed)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     allowed: Optional[jax.Array]) -> jax.Array:
  """Queries over keys where `allowed`; the unchecked core of the above.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, heads, head_dim];
  allowed: bool broadcastable to [batch, heads, q_len, kv_len], or None.
  Returns [batch, q_len, heads, head_dim] in q's dtype; scores and softmax
  are float32 (or wider) and a row without keys gets zeros.
  """
  scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  wide = score_dtype(q.dtype)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q * scale, k,
                      preferred_element_type=wide)
  weights = masked_softmax(scores, allowed)
  out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v,
                   preferred_element_type=wide)
  return out.astype(q.dtype)
