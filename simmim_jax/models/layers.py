"""Flax linen layers: they hold parameters and call the pure functions.

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'kv',
'vocab', 'layers', ...) that the training stack maps to mesh axes.
"""

from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.template_layer import TemplateAttention
from simmim_jax.ops import attention
from simmim_jax.ops import decode_attention
from simmim_jax.ops import hierarchy


def dense_init(*axes: Optional[str]):
  # DenseGeneral initialises its kernel flattened to 2-D, so fans are plain.
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def layer_norm(config: ModelConfig, name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      dtype=config.compute_dtype, param_dtype=config.storage_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


class Mlp(nn.Module):
  """Dense(hidden) -> GELU -> dropout -> Dense(out).  x: [..., embed]."""
  config: ModelConfig
  out_dim: Optional[int] = None   # default: d_model
  out_axis: str = 'embed'

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dense = lambda features, axes, name: nn.Dense(
        features, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
        kernel_init=dense_init(*axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                               axes[-1:]),
        name=name)
    x = dense(cfg.mlp_dim, ('embed', 'mlp'), 'wi')(x)
    x = nn.gelu(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return dense(self.out_dim or cfg.d_model, ('mlp', self.out_axis), 'wo')(x)


def head_projection(config: ModelConfig, name: str) -> nn.DenseGeneral:
  """[..., embed] -> [..., heads, head_dim] (query, key or value)."""
  return nn.DenseGeneral(
      (config.num_heads, config.head_dim), dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, use_bias=False,
      kernel_init=dense_init('embed', 'heads', 'kv'), name=name)


def output_projection(config: ModelConfig) -> nn.DenseGeneral:
  """[..., heads, head_dim] -> [..., embed]."""
  return nn.DenseGeneral(
      config.d_model, axis=(-2, -1), dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, use_bias=False,
      kernel_init=dense_init('heads', 'kv', 'embed'), name='out')


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
      out = attention.full_attention(q, k, v, mask=mask, causal=self.causal)
    else:
      out = attention.segment_attention(q, k, v, cfg.segment_len, mask=mask,
                                        causal=self.causal)
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
      out = (attention.full_attention(q, k, v, causal=True) if full else
             attention.segment_attention(q, k, v, cfg.segment_len,
                                         causal=True))
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


class SegmentStateMerge(nn.Module):
  """Segment states attend to each other; the result is merged per segment.

  Returns the update to add to x: [batch, length, embed], constant over the
  positions of a segment. Non-causal: state = a segment's first vector, and
  segment i receives FFN(s~_i). Causal: state = a segment's last vector (the
  one that has seen the whole segment); s~ attends to earlier states only and
  segment i receives FFN(s~_{i-1}), so nothing merged into segment i depends
  on segment i itself; segment 0 receives nothing.
  """
  config: ModelConfig
  causal: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array],
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None):
    cfg = self.config
    batch, length, dim = x.shape
    norm = layer_norm(cfg, 'state_norm')
    key_dim = cfg.state_key_dim or dim
    weight = lambda name, shape, axes: self.param(
        name, dense_init(*axes), shape, cfg.storage_dtype)
    w_q = weight('w_q', (dim, key_dim), ('embed', 'state_kv'))
    w_k = weight('w_k', (dim, key_dim), ('embed', 'state_kv'))
    w_v = weight('w_v', (dim, dim), ('embed', 'state_embed'))
    merge = lambda new_states: (Mlp(cfg, name='merge_ffn')(
        new_states, deterministic=self.deterministic) if cfg.ffn_merge
                                else new_states)
    if cache is not None:
      return self._decode_step(x, positions, cache, norm, w_q, w_k, w_v,
                               merge)

    segments = attention.split_segments(x, cfg.segment_len)
    states = segments[:, :, -1 if self.causal else 0]  # [batch, m, embed]
    segment_mask = attention.segment_mask(mask, batch, length, cfg.segment_len)
    states = norm(states)
    self.sow('intermediates', 'states', states)
    new_states = attention.segment_state_attention(
        states, w_q, w_k, w_v, mask=segment_mask, causal=self.causal,
        exclude_self=cfg.exclude_self)
    given = merge(new_states)  # [batch, m, embed]: what segment i gives
    update = given
    if self.causal:
      update = jnp.pad(given[:, :-1], ((0, 0), (1, 0), (0, 0)))
    update = jnp.repeat(update, cfg.segment_len, axis=1)[:, :length]
    if positions is None:
      return update
    # Prefill: states of the segments each prompt finished, and the merge
    # of the segment its next token falls in (none for segment 0).
    finished = positions // cfg.segment_len
    last = jnp.take_along_axis(given, jnp.maximum(finished - 1, 0)[:, None,
                                                                   None],
                               axis=1)[:, 0]
    return update, {
        'state_keys': states @ w_k.astype(states.dtype),
        'state_values': states @ w_v.astype(states.dtype),
        'merge': jnp.where((finished > 0)[:, None], last, 0).astype(
            update.dtype)}

  def _decode_step(self, x, positions, cache, norm, w_q, w_k, w_v, merge):
    """x: [batch, 1, embed] at `positions`. The token that ends a segment
    turns it into a state: the state attends to the finished ones, and its
    merge replaces the cached one for the segment that follows."""
    if not self.causal:
      raise ValueError('a decoding cache needs a causal model')
    segment_len = self.config.segment_len
    segment = positions // segment_len
    finishing = positions % segment_len == segment_len - 1
    state = norm(x[:, 0])  # [batch, embed]

    def finish(module, state, cache):
      del module
      new_state = decode_attention.state_query(
          state, cache['state_keys'], cache['state_values'], w_q, segment)
      return jnp.where(finishing[:, None], merge(new_state),
                       cache['merge']).astype(cache['merge'].dtype)

    # One token in segment_len ends a segment: skip the state work otherwise.
    new_merge = nn.cond(jnp.any(finishing), finish,
                        lambda module, state, cache: cache['merge'], self,
                        state, cache)
    write = lambda buffer, value: decode_attention.write_slot(
        buffer, value, segment, finishing)
    return cache['merge'][:, None], {
        'state_keys': write(cache['state_keys'],
                            state @ w_k.astype(state.dtype)),
        'state_values': write(cache['state_values'],
                              state @ w_v.astype(state.dtype)),
        'merge': new_merge}


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

    token_mask = attention.split_segments(mask.astype(bool), cfg.segment_len,
                                          False)
    nodes = hierarchy.masked_mean(attention.split_segments(x, cfg.segment_len),
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
