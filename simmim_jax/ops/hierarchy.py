"""Hierarchical encoding: adjacent segment pairs merged level by level.

Level h combines nodes (2i, 2i+1) of level h-1 into node i, so
ceil(log2 num_segments) levels leave one global representation. The levels run
under `lax.scan` with a fixed-shape carry: the node array keeps its width
(padded to a power of two) and each level writes its results into the first
half, marking the rest invalid.

A pair is combined only when both nodes are real; a real node whose partner is
not (an odd node out, or padding) moves up unchanged. So an input padded with
masked segments gives exactly the result of the unpadded one.
"""

import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from simmim_jax import checks

Params = Mapping[str, jax.Array]


def concat_pair(params: Params, left: jax.Array, right: jax.Array) -> jax.Array:
  """[left, right] @ kernel + bias.  left, right: [batch, pairs, dim]."""
  joined = jnp.concatenate([left, right], axis=-1)
  return joined @ params['kernel'].astype(left.dtype) + params['bias']


def weighted_sum_pair(params: Params, left: jax.Array,
                      right: jax.Array) -> jax.Array:
  """Per-feature convex combination with learned weights softmax(logits)."""
  weights = jax.nn.softmax(params['logits'].astype(jnp.float32), axis=0)
  return weights[0] * left + weights[1] * right


def attention_pair(params: Params, left: jax.Array,
                   right: jax.Array) -> jax.Array:
  """Learned pooling queries (one per head) attend over the two nodes."""
  pair = jnp.stack([left, right], axis=2)  # [batch, pairs, 2, dim]
  keys = jnp.einsum('bpsd,dhk->bpshk', pair, params['key'].astype(pair.dtype))
  values = jnp.einsum('bpsd,dhk->bpshk', pair,
                      params['value'].astype(pair.dtype))
  head_dim = keys.shape[-1]
  scores = jnp.einsum('hk,bpshk->bphs', params['query'].astype(pair.dtype),
                      keys, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(scores / math.sqrt(head_dim), axis=-1)
  pooled = jnp.einsum('bphs,bpshk->bphk', weights.astype(values.dtype), values)
  return jnp.einsum('bphk,hkd->bpd', pooled, params['out'].astype(pair.dtype))


AGGREGATORS: dict[str, Callable[[Params, jax.Array, jax.Array], jax.Array]] = {
    'concat': concat_pair,
    'weighted_sum': weighted_sum_pair,
    'attention': attention_pair,
}


def get_aggregator(name: str):
  if name not in AGGREGATORS:
    raise checks.ConfigError(
        f'unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}')
  return AGGREGATORS[name]


def aggregator_params_spec(name: str, dim: int,
                           num_heads: int) -> dict[str, tuple[Any, ...]]:
  """Parameter shapes of one level: {name: (shape, logical_axes, init)}."""
  get_aggregator(name)
  dense = jax.nn.initializers.lecun_normal()
  if name == 'concat':
    return {
        'kernel': ((2 * dim, dim), ('pair_embed', 'embed'), dense),
        'bias': ((dim,), ('embed',), jax.nn.initializers.zeros),
    }
  if name == 'weighted_sum':
    return {'logits': ((2, dim), (None, 'embed'), jax.nn.initializers.zeros)}
  if dim % num_heads:
    raise ValueError(f'attention aggregator: dim {dim} is not divisible by '
                     f'num_heads {num_heads}')
  head_dim = dim // num_heads
  in_proj = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
  return {
      'query': ((num_heads, head_dim), ('heads', 'kv'),
                jax.nn.initializers.normal(1.0)),
      'key': ((dim, num_heads, head_dim), ('embed', 'heads', 'kv'), in_proj),
      'value': ((dim, num_heads, head_dim), ('embed', 'heads', 'kv'), in_proj),
      'out': ((num_heads, head_dim, dim), ('heads', 'kv', 'embed'),
              jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)),
  }


def num_tree_levels(num_segments: int) -> int:
  """ceil(log2(num_segments)): the levels that reduce the nodes to one."""
  return (num_segments - 1).bit_length()


def hierarchical_aggregate(nodes: jax.Array, params: Params, *,
                           aggregator: str,
                           mask: Optional[jax.Array] = None,
                           num_levels: Optional[int] = None,
                           per_level: bool = False) -> jax.Array:
  """Reduces segment representations to one vector by pairwise merging.

  Args:
    nodes: [batch, num_segments, dim] segment representations.
    params: the aggregator's parameters (see `aggregator_params_spec`); with
      `per_level`, every leaf has a leading [levels] axis of at least the
      number of levels run, and level h uses slice h.
    aggregator: 'concat', 'weighted_sum' or 'attention'.
    mask: optional [batch, num_segments] bool, True = real segment.
    num_levels: levels to run, at most ceil(log2 num_segments) (the default);
      when fewer, the remaining nodes are averaged over the real ones.
    per_level: separate weights per level instead of one shared set.

  Returns:
    [batch, dim] global representation (zeros for a fully masked example).
  """
  combine = get_aggregator(aggregator)
  checks.rank(nodes, 3, 'nodes', '[batch, num_segments, dim]')
  batch, num_segments, dim = nodes.shape
  checks.mask(mask, (batch, num_segments))
  full_levels = num_tree_levels(num_segments)
  if num_levels is None:
    levels = full_levels
  else:
    levels = min(checks.integer(num_levels, 'num_levels', minimum=0,
                                hint='(or None: all)'), full_levels)
  if per_level:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      if leaf.shape[0] < levels:
        raise ValueError(
            f'per-level aggregator parameter {jax.tree_util.keystr(path)} has '
            f'{leaf.shape[0]} levels but {levels} are needed')

  width = 2 ** full_levels
  valid = (jnp.ones((batch, num_segments), bool) if mask is None
           else mask.astype(bool))
  pad = width - num_segments
  x = jnp.pad(nodes, ((0, 0), (0, pad), (0, 0)))
  valid = jnp.pad(valid, ((0, 0), (0, pad)))

  def level(carry, level_params):
    x, valid = carry
    left, right = x[:, 0::2], x[:, 1::2]
    left_valid, right_valid = valid[:, 0::2, None], valid[:, 1::2, None]
    merged = combine(level_params, left, right).astype(x.dtype)
    out = jnp.where(left_valid & right_valid, merged,
                    jnp.where(left_valid, left, right))
    out_valid = (left_valid | right_valid)[..., 0]
    x = jnp.concatenate([out, jnp.zeros_like(out)], axis=1)
    valid = jnp.concatenate([out_valid, jnp.zeros_like(out_valid)], axis=1)
    return (x, valid), None

  if levels:
    if per_level:
      level_params = jax.tree_util.tree_map(lambda p: p[:levels], params)
      (x, valid), _ = jax.lax.scan(level, (x, valid), level_params)
    else:
      (x, valid), _ = jax.lax.scan(lambda c, _: level(c, params), (x, valid),
                                   None, length=levels)
  remaining = width >> levels
  return masked_mean(x[:, :remaining], valid[:, :remaining], axis=1)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Mean of x over `axis` where mask (zeros where none).

  x: [..., dim]; mask: bool of x.shape[:-1].
  """
  mask = mask.astype(bool)[..., None]
  total = jnp.sum(jnp.where(mask, x, 0), axis=axis, dtype=jnp.float32)
  count = jnp.maximum(jnp.sum(mask, axis=axis), 1)
  return (total / count).astype(x.dtype)
