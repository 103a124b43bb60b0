"""Flax linen layers: self- and cross-attention, the SMI block, pooling.

They hold parameters (with logical axis names, see projections.py) and call
the pure functions of ops/.
"""

from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.projections import Mlp
from simmim_jax.models.projections import head_projection
from simmim_jax.models.projections import layer_norm
from simmim_jax.models.projections import output_projection
from simmim_jax.models.state_merge import SegmentStateMerge
from simmim_jax.models.template_layer import TemplateAttention
from simmim_jax.ops import attention
from simmim_jax.ops import decode_attention
from simmim_jax.ops import hierarchy
from simmim_jax.ops import segments


class SelfAttention(nn.Module):
  """Multi-head projections around segment attention (or full attention).

  x: [batch, length, embed] -> [batch, length, embed]. With `positions`
  (causal only) it also keeps a decoding cache, see `SMIBlock`: prefill
  returns (out, cache), decode takes x [batch, 1, embed] and the cache and
  returns (out, new cache).
  """
  config: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array],
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None):
    cfg = self.config
    q, k, v = (head_projection(cfg, name)(x)
               for name in ('query', 'key', 'value'))
    out_projection = output_projection(cfg)
    if positions is not None:
      out, cache = self._cached(q, k, v, positions, cache)
      return out_projection(out), cache
    # Kept only when 'intermediates' is mutable (see attention_maps.py).
    self.sow('intermediates', 'queries', q)
    self.sow('intermediates', 'keys', k)
    if cfg.attention_kind == 'templates':
      out = TemplateAttention(cfg, self.causal, name='templates')(
          q, k, v, mask)
    elif cfg.family == 'transformer':
      out = attention.full_attention(
          q, k, v, mask=mask, causal=self.causal,
          implementation=cfg.attention_implementation)
    else:
      out = attention.segment_attention(
          q, k, v, cfg.segment_len, mask=mask, causal=self.causal,
          implementation=cfg.attention_implementation)
    return out_projection(out)

  def _cached(self, q, k, v, positions, cache):
    """Prefill (cache None: q, k, v hold each row's prompt, `positions` its
    length) or one decoding step (q, k, v: [batch, 1, heads, head_dim] at
    `positions`). Slots: the whole context for 'transformer', the current
    segment for the segment families."""
    cfg = self.config
    if not self.causal:
      raise ValueError('a decoding cache needs a causal model')
    if cfg.attention_kind == 'templates':
      return TemplateAttention(cfg, self.causal, name='templates')(
          q, k, v, None, positions=positions, cache=cache)
    full = cfg.family == 'transformer'
    if cache is None:
      kernel = cfg.attention_implementation
      out = (attention.full_attention(q, k, v, causal=True,
                                      implementation=kernel) if full else
             attention.segment_attention(q, k, v, cfg.segment_len,
                                         causal=True, implementation=kernel))
      if full:
        return out, {'keys': k, 'values': v}
      # The segment the next token falls in: it starts at a multiple of l.
      start = positions // cfg.segment_len * cfg.segment_len
      return out, {
          'keys': decode_attention.read_window(k, start, cfg.segment_len),
          'values': decode_attention.read_window(v, start, cfg.segment_len)}
    slot = positions if full else positions % cfg.segment_len
    keys = decode_attention.write_slot(cache['keys'], k[:, 0], slot)
    values = decode_attention.write_slot(cache['values'], v[:, 0], slot)
    allowed = jnp.arange(keys.shape[1])[None, :] <= slot[:, None]
    out = decode_attention.cached_attention(q[:, 0], keys, values, allowed)
    return out[:, None], {'keys': keys, 'values': values}


class CrossAttention(nn.Module):
  """Decoder positions attend to the encoder's outputs (the memory).

  x: [batch, length, embed]; memory: (outputs [batch, memory_len, embed],
  mask [batch, memory_len] bool) or None when `cache` holds the memory's
  keys and values (decoding). Returns (out [batch, length, embed], cache):
  {'keys', 'values': [batch, memory_len, heads, head_dim], 'mask'}, computed
  once per source and read at every decoding step.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, memory: Optional[tuple],
               cache: Optional[dict] = None):
    cfg = self.config
    q = head_projection(cfg, 'query')(x)
    if cache is None:
      outputs, memory_mask = memory
      cache = {'keys': head_projection(cfg, 'key')(outputs),
               'values': head_projection(cfg, 'value')(outputs),
               'mask': memory_mask.astype(bool)}
    out = attention.cross_attention(q, cache['keys'], cache['values'],
                                    key_mask=cache['mask'])
    return output_projection(cfg)(out), cache


class SMIBlock(nn.Module):
  """One pre-LayerNorm layer: attention, segment-state merge, MLP.

  With family 'simmim' this is the SMI block; 'local' drops the state merge
  and 'transformer' uses full attention, so the baselines differ from SimMIM
  only in token mixing. A decoder block (`cross`) also attends to the
  encoder's outputs (`memory`, see `CrossAttention`) before its MLP. Returns
  (x, None) so it can be scanned over layers.

  Decoding (causal blocks): with `positions` [batch] int and no cache, x
  holds each row's prompt and `positions` its length (prefill); with a cache,
  x [batch, 1, embed] holds each row's token at `positions` (one step).
  Both return (x, this layer's cache): {'attention': keys and values (or
  template running softmaxes), 'state_merge': states of finished segments
  and the current segment's merge (simmim), 'cross_attention': the memory's
  keys and values (decoders)}.
  """
  config: ModelConfig
  causal: bool = False
  deterministic: bool = True
  cross: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array],
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None,
               memory: Optional[tuple] = None):
    cfg = self.config
    dropout = lambda y: nn.Dropout(cfg.dropout_rate)(
        y, deterministic=self.deterministic)
    new_cache = {}

    def mix(module, y):
      if positions is None:
        return module(y, mask)
      out, new_cache[module.name] = module(
          y, mask, positions, None if cache is None else cache[module.name])
      return out

    x = x + dropout(mix(SelfAttention(cfg, self.causal, name='attention'),
                        layer_norm(cfg, 'attention_norm')(x)))
    if cfg.uses_segment_states:
      x = x + dropout(mix(SegmentStateMerge(
          cfg, self.causal, self.deterministic, name='state_merge'), x))
    if self.cross:
      out, cross_cache = CrossAttention(cfg, name='cross_attention')(
          layer_norm(cfg, 'cross_attention_norm')(x), memory,
          None if cache is None else cache['cross_attention'])
      new_cache['cross_attention'] = cross_cache
      x = x + dropout(out)
    x = x + dropout(Mlp(cfg, name='mlp')(layer_norm(cfg, 'mlp_norm')(x),
                                         deterministic=self.deterministic))
    return x, (None if positions is None else new_cache)


class GlobalPool(nn.Module):
  """Token outputs -> one vector per example.

  'hierarchical': mean of each segment's real tokens, then the pairwise
  hierarchy of `hierarchy.hierarchical_aggregate`. 'mean': mean of real tokens.
  x: [batch, length, embed] -> [batch, embed].
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    cfg = self.config
    batch, length, dim = x.shape
    if mask is None:
      mask = jnp.ones((batch, length), bool)
    if cfg.pooling == 'mean':
      return hierarchy.masked_mean(x, mask, axis=1)

    token_mask = segments.split_segments(mask.astype(bool), cfg.segment_len,
                                          False)
    nodes = hierarchy.masked_mean(segments.split_segments(x, cfg.segment_len),
                         token_mask, axis=2)
    params = {}
    levels = max(cfg.max_levels, 1)
    for name, (shape, axes, init) in hierarchy.aggregator_params_spec(
        cfg.aggregator, dim, cfg.num_heads).items():
      if cfg.per_level_weights:
        shape, axes = (levels, *shape), ('levels', *axes)
        init = _stacked(init, levels)
      params[name] = self.param(
          name, nn.with_logical_partitioning(init, axes), shape,
          cfg.storage_dtype)
    return hierarchy.hierarchical_aggregate(
        nodes, params, aggregator=cfg.aggregator,
        mask=jnp.any(token_mask, axis=2), num_levels=cfg.num_levels,
        per_level=cfg.per_level_weights)


def _stacked(init, levels: int):
  """An initializer for [levels, *shape] that initialises each level alone."""
  def stacked_init(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, levels)
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return stacked_init
