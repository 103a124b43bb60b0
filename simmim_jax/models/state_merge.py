"""The segment-state layer of a SimMIM block: states attend to each other,
then the tokens receive them (`state_readout`).

k = `states_per_segment` states per segment: its first k vectors, or, causal,
its last k (the ones that have seen the whole segment). Readouts:
  'merge' (the seed's equation): every position of segment i gets one
    vector, the mean over i's states of FFN(s~); causal: segment i gets
    segment i - 1's, so nothing merged into segment i depends on segment i.
  'attend': every token attends (multi-head) over the FFN(s~) of the states
    it may read: causal, those of earlier segments; otherwise all. A token
    picks out the state it needs instead of receiving a broadcast.
"""

from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.projections import Mlp
from simmim_jax.models.projections import dense_init
from simmim_jax.models.projections import head_projection
from simmim_jax.models.projections import layer_norm
from simmim_jax.models.projections import output_projection
from simmim_jax.ops import decode_attention
from simmim_jax.ops import hierarchy
from simmim_jax.ops import segment_states


class SegmentStateMerge(nn.Module):
  """Returns the update to add to x [batch, length, embed].

  With `positions` (causal prefill) it also returns the decoding cache:
  'state_keys', 'state_values' (s w_k, s w_v of every state), 'pending'
  (k > 1: the current segment's states so far), and for 'merge' the merge of
  the segment the next token falls in, for 'attend' the 'readout_keys' and
  'readout_values' of every state. With `cache`, x is one token per row.
  """
  config: ModelConfig
  causal: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array],
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None):
    cfg = self.config
    k = cfg.states_per_segment
    batch, length, dim = x.shape
    key_dim = cfg.state_key_dim or dim
    weight = lambda name, shape, axes: self.param(
        name, dense_init(*axes), shape, cfg.storage_dtype)
    norm = layer_norm(cfg, 'state_norm')
    w_q = weight('w_q', (dim, key_dim), ('embed', 'state_kv'))
    w_k = weight('w_k', (dim, key_dim), ('embed', 'state_kv'))
    w_v = weight('w_v', (dim, dim), ('embed', 'state_embed'))
    merge = lambda new_states: (Mlp(cfg, name='merge_ffn')(
        new_states, deterministic=self.deterministic) if cfg.ffn_merge
                                else new_states)
    readout = _Readout(cfg) if cfg.state_readout == 'attend' else None
    if cache is not None:
      return self._decode_step(x, positions, cache, norm, (w_q, w_k, w_v),
                               merge, readout)

    picked, state_mask = segment_states.pick_states(
        x, cfg.segment_len, k, mask=mask, causal=self.causal)
    states = norm(picked)  # [batch, m * k, embed]
    self.sow('intermediates', 'states', states)
    new_states = segment_states.segment_state_attention(
        states, w_q, w_k, w_v, mask=state_mask, causal=self.causal,
        exclude_self=cfg.exclude_self, states_per_segment=k)
    given = merge(new_states)  # [batch, m * k, embed]: what each state gives
    if readout is not None:
      read_keys, read_values = readout.keys_values(given)
      update = readout.read(x, read_keys, read_values, state_mask,
                            self.causal)
    else:
      by_segment = given.reshape(batch, -1, k, dim)
      per_segment = (by_segment.mean(axis=2) if state_mask is None else
                     hierarchy.masked_mean(
                         by_segment, state_mask.reshape(by_segment.shape[:3]),
                         axis=2))
      update = per_segment
      if self.causal:
        update = jnp.pad(per_segment[:, :-1], ((0, 0), (1, 0), (0, 0)))
      update = jnp.repeat(update, cfg.segment_len, axis=1)[:, :length]
    if positions is None:
      return update
    cache = {'state_keys': states @ w_k.astype(states.dtype),
             'state_values': states @ w_v.astype(states.dtype)}
    # Prefill: the segment each prompt's next token falls in.
    current = positions // cfg.segment_len
    if k > 1:  # its states so far; the rest are written as tokens arrive
      start = current * cfg.segment_len + cfg.segment_len - k
      cache['pending'] = norm(decode_attention.read_window(x, start, k))
    if readout is not None:
      cache.update(readout_keys=read_keys, readout_values=read_values)
    else:  # the merge that segment receives (none for segment 0)
      last = jnp.take_along_axis(
          per_segment, jnp.maximum(current - 1, 0)[:, None, None], axis=1)
      cache['merge'] = jnp.where((current > 0)[:, None], last[:, 0],
                                 0).astype(update.dtype)
    return update, cache

  def _decode_step(self, x, positions, cache, norm, weights, merge, readout):
    """x: [batch, 1, embed] at `positions`. A token among its segment's last
    k becomes a pending state; the one that ends the segment turns them into
    states: they attend to the finished ones, and what they give is cached
    for the segments that follow."""
    if not self.causal:
      raise ValueError('a decoding cache needs a causal model')
    cfg = self.config
    segment_len, k = cfg.segment_len, cfg.states_per_segment
    w_q, w_k, w_v = weights
    segment = positions // segment_len
    offset = positions % segment_len
    finishing = offset == segment_len - 1
    state = norm(x[:, 0])  # [batch, embed]
    new_cache = {}
    if k > 1:
      new_cache['pending'] = decode_attention.write_slot(
          cache['pending'], state, offset - (segment_len - k),
          offset >= segment_len - k)
      states = new_cache['pending']
    else:
      states = state[:, None]  # [batch, k, embed]
    first = segment * k  # the cache slot of this segment's first state
    query = jax.vmap(decode_attention.state_query,
                     in_axes=(1, None, None, None, None), out_axes=1)

    def finish(module, states, cache):
      del module
      return merge(query(states, cache['state_keys'], cache['state_values'],
                         w_q, first)).astype(states.dtype)

    # One token in segment_len ends a segment: skip the state work otherwise.
    given = nn.cond(jnp.any(finishing), finish,
                    lambda module, states, cache: jnp.zeros_like(states),
                    self, states, cache)  # [batch, k, embed]

    def write(buffer, values):  # the k new states' slots, finishing rows
      for a in range(k):
        buffer = decode_attention.write_slot(buffer, values[:, a], first + a,
                                             finishing)
      return buffer

    new_cache['state_keys'] = write(cache['state_keys'],
                                    states @ w_k.astype(states.dtype))
    new_cache['state_values'] = write(cache['state_values'],
                                      states @ w_v.astype(states.dtype))
    if readout is None:
      new_cache['merge'] = jnp.where(
          finishing[:, None], given.mean(axis=1),
          cache['merge']).astype(cache['merge'].dtype)
      return cache['merge'][:, None], new_cache
    read_keys, read_values = readout.keys_values(given)
    new_cache['readout_keys'] = write(cache['readout_keys'], read_keys)
    new_cache['readout_values'] = write(cache['readout_values'], read_values)
    # The finished segments' states only: slots before this segment's.
    slots = cache['readout_keys'].shape[1]
    allowed = jnp.arange(slots)[None, :] < first[:, None]
    return readout.read_one(x, cache['readout_keys'], cache['readout_values'],
                            allowed), new_cache


class _Readout:
  """The projections of state_readout='attend', created in the calling
  module's scope: the token queries (from the layer-normed tokens) and the
  states' keys and values, per head."""

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    self.norm = layer_norm(cfg, 'readout_norm')
    self.query = head_projection(cfg, 'readout_query')
    self.key = head_projection(cfg, 'readout_key')
    self.value = head_projection(cfg, 'readout_value')
    self.out = output_projection(cfg, 'readout_out')

  def keys_values(self, given):
    """given [batch, states, embed] -> keys, values [batch, states, heads,
    head_dim]."""
    return self.key(given), self.value(given)

  def read(self, x, keys, values, state_mask, causal):
    """Every token of x [batch, length, embed] over the states it may read."""
    out = segment_states.state_readout(
        self.query(self.norm(x)), keys, values,
        segment_len=self.cfg.segment_len,
        states_per_segment=self.cfg.states_per_segment, mask=state_mask,
        causal=causal)
    return self.out(out)

  def read_one(self, x, keys, values, allowed):
    """x [batch, 1, embed] over the cached slots `allowed` [batch, slots]."""
    out = decode_attention.cached_attention(self.query(self.norm(x))[:, 0],
                                            keys, values, allowed)
    return self.out(out[:, None])
