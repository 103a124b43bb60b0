"""Segment and full attention on the vendor kernels JAX has: cuDNN flash
attention on GPU (`jax.nn.dot_product_attention`) and Pallas splash attention
on TPU, and the choice among them and the XLA and CPU-loop paths of
`attention.py` (`choose_implementation`).

Both kernels see the segments as the attention's own structure, so the
blocks outside a segment are never computed: cuDNN gets the sequence cut
into `[batch * num_segments, segment_len, heads, head_dim]` (a reshape when
the length is a multiple of `segment_len`), splash a block-diagonal mask
whose off-diagonal blocks are empty. A dense [length, length] mask or a
sliding window would not skip them.

Shapes as in attention.py: q, k, v [batch, length, heads, head_dim]; mask
[batch, length] bool, True = a real token (a key to read); a query with no
real key allowed gives zeros.
"""

from typing import Literal, Optional

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import (
  splash_attention_kernel as splash,
)
from jax.experimental.pallas.ops.tpu.splash_attention import (
  splash_attention_mask as masks,
)
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ('loop', 'xla', 'cudnn', 'splash')
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides the segment


def choose_implementation(implementation: Optional[str], *, dtype,
                          head_dim: int, segment_len: Optional[int],
                          backend: Optional[str] = None) -> str:
  """The path `segment_attention` (or, with `segment_len` None,
  `full_attention`) takes: `implementation` checked, or when None the
  fastest correct one for the backend and dtype. Raises ValueError when a
  forced path cannot take the inputs."""
  backend = backend or jax.default_backend()
  if implementation is None:
    if backend == 'cpu':
      return 'loop'
    if backend == 'gpu' and not _cudnn_problem(dtype, head_dim, backend):
      return 'cudnn'
    if backend == 'tpu' and not _splash_problem(segment_len):
      return 'splash'
    return 'xla'
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation must be one of {IMPLEMENTATIONS} or '
                      f'None (the fastest for the backend), got '
                      f'{implementation!r}')
  problem = {'cudnn': _cudnn_problem(dtype, head_dim, backend),
             'splash': _splash_problem(segment_len)}.get(implementation)
  if problem:
    raise ValueError(f"implementation={implementation!r} cannot take these "
                      f"inputs: {problem}; use 'xla' or leave it None")
  return implementation


def _cudnn_problem(dtype, head_dim, backend) -> str:
  if backend != 'gpu':
    return f'cuDNN needs a GPU backend, this is {backend!r}'
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
    return (f'cuDNN flash attention takes bfloat16 or float16, got '
            f'{jnp.dtype(dtype).name} (cast, or set precision=bf16)')
  if head_dim % 8 or head_dim > 256:
    return f'cuDNN needs head_dim a multiple of 8 up to 256, got {head_dim}'
  return ''


def _splash_problem(segment_len) -> str:
  if segment_len is not None and segment_len % 128:
    return (f'splash attention needs segment_len a multiple of 128 (its '
            f'blocks tile the segments), got {segment_len}')
  return ''


def _segments(x, segment_len, fill=0):
  """[batch, length, ...] -> [batch * num_segments, segment_len, ...]."""
  batch, length = x.shape[:2]
  padded = -(-length // segment_len) * segment_len
  if padded != length:
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, padded - length)
    x = jnp.pad(x, widths, constant_values=fill)
  return x.reshape(batch * (padded // segment_len), segment_len,
                   *x.shape[2:])


def _real_keys(mask, batch, length):
  return (jnp.ones((batch, length), bool) if mask is None
          else mask.astype(bool))


def cudnn_segment_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                            mask: Optional[jax.Array], segment_len: int,
                            causal: bool, *,
                            kernel: Literal['cudnn', 'xla'] = 'cudnn'
                            ) -> jax.Array:
  """Segment attention as cuDNN flash attention over
  `[batch * num_segments, segment_len, heads, head_dim]`.

  The mask travels as each segment's number of real keys
  (`key_value_seq_lengths`), so it must hold each row's real tokens first
  (padding at the end), as every pipeline here writes it; a short last
  segment is a segment with fewer keys. `kernel='xla'` runs the same call on
  XLA's implementation, which is how the CPU tests check all of this but the
  kernel. Returns [batch, length, heads, head_dim] in q's dtype.
  """
  batch, length = q.shape[:2]
  real = _segments(_real_keys(mask, batch, length), segment_len, False)
  key_counts = real.sum(axis=1, dtype=jnp.int32)  # [batch * segments]
  out = jax.nn.dot_product_attention(
      _segments(q, segment_len), _segments(k, segment_len),
      _segments(v, segment_len), is_causal=causal,
      key_value_seq_lengths=key_counts, implementation=kernel)
  # With real keys first, every query of a segment with a key has one.
  out = jnp.where((key_counts > 0)[:, None, None, None], out, 0)
  return out.reshape(batch, -1, *q.shape[2:])[:, :length]


class _SegmentMask(masks._ComputableMask):  # pylint: disable=protected-access
  """`q // l == k // l` as a splash computable mask: blocks that tile the
  segments are full or empty, and the empty ones are skipped.
  (`ChunkedCausalMask` is its causal form.)"""

  def __init__(self, shape: tuple[int, int], segment_len: int):
    self.segment_len = segment_len
    super().__init__(shape, lambda q, k: q // segment_len == k // segment_len)

  def __eq__(self, other):
    return (isinstance(other, _SegmentMask)
            and (self.shape, self.segment_len)
            == (other.shape, other.segment_len))

  def __hash__(self):
    return hash((_SegmentMask, self.shape, self.segment_len))


def splash_segment_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                             mask: Optional[jax.Array],
                             segment_len: Optional[int], causal: bool, *,
                             interpret: Optional[bool] = None) -> jax.Array:
  """Segment attention (full attention when `segment_len` is None) as
  Pallas splash attention, vmapped over the batch.

  The mask is splash's segment ids (every query id 1, a key's id 1 when
  real), so any mask works; the length is padded to whole segments (to a
  multiple of 128 for full attention). Off TPU it runs in Pallas interpret
  mode (`interpret` None), which is how the CPU tests run it. Returns
  [batch, length, heads, head_dim] in q's dtype.
  """
  batch, length, heads, head_dim = q.shape
  tile = segment_len or 128
  padded = -(-length // tile) * tile
  span = segment_len or padded
  block = next(b for b in _SPLASH_BLOCKS if span % b == 0)
  head_mask: masks.Mask
  if causal:
    head_mask = masks.ChunkedCausalMask((padded, padded), chunk_size=span)
  elif segment_len is None:
    head_mask = masks.FullMask((padded, padded))
  else:
    head_mask = _SegmentMask((padded, padded), segment_len)
  kernel = splash.make_splash_mha(
      masks.MultiHeadMask([head_mask] * heads),
      block_sizes=splash.BlockSizes(*(block,) * 3, *(block,) * 5),
      head_shards=1, q_seq_shards=1,
      interpret=(jax.default_backend() != 'tpu' if interpret is None
                 else interpret))

  def heads_first(x):  # [batch, padded, heads, d] -> [batch, heads, padded, d]
    x = jnp.pad(x, [(0, 0), (0, padded - length), (0, 0), (0, 0)])
    return jnp.swapaxes(x, 1, 2)

  real = jnp.pad(_real_keys(mask, batch, length), [(0, 0),
                                                   (0, padded - length)])
  ids = splash.SegmentIds(q=jnp.ones((batch, padded), jnp.int32),
                          kv=real.astype(jnp.int32))
  scale = np.asarray(1 / np.sqrt(head_dim), q.dtype)
  out = jax.vmap(kernel)(heads_first(q * scale), heads_first(k),
                         heads_first(v), segment_ids=ids)
  out = jnp.swapaxes(out, 1, 2)[:, :length].astype(q.dtype)
  # A query whose segment holds no real key it may read: zeros, not the
  # average splash gives a row without keys.
  per_segment = real.reshape(batch, -1, span)
  seen = (jnp.cumsum(per_segment, axis=2) if causal
          else jnp.any(per_segment, axis=2, keepdims=True))
  has_key = jnp.broadcast_to(seen > 0, per_segment.shape).reshape(
      batch, padded)[:, :length]
  return jnp.where(has_key[:, :, None, None], out, 0)
