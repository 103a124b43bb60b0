"""The template attention layer: a learned library in place of token queries.

See templates.py for the pure functions and template_learning.py for how the
library learns; this module only holds the variables and calls them.
"""

from flax import linen as nn
import jax
import jax.numpy as jnp

from simmim_jax.models.model_config import ModelConfig
from simmim_jax.ops import template_learning
from simmim_jax.ops import templates as templates_lib

# Collections of the template layer besides 'params' (see TemplateAttention).
STATS = 'template_stats'
PARAM_UPDATES = 'param_updates'
# The template memory: a fixed context's template outputs, which later
# inputs read (inference/template_memory.py). Not the decoding cache below.
TEMPLATE_MEMORY = 'template_memory'
# The decoding cache of causal template attention (templates.py).
_RUNNING = ('template_max', 'template_total', 'template_weighted')


class TemplateAttention(nn.Module):
  """Attention through a learned template library (memory-in-memory).

  Each query takes its nearest template's attention output (over its segment,
  or the whole sequence for family 'transformer'; over earlier keys only when
  causal): K outputs per segment instead of one per query.

  Library learning (config.template_update):
    'vq':  VQ-VAE style. The library gets the task gradient through its
           outputs plus the codebook loss; the queries get it through
           straight-through soft routing plus the commitment loss.
    'ema': EMA k-means moves each template to the running mean of its
           queries; no gradient reaches the library (commitment loss only).
  The losses are sown into 'losses', which the train step adds.

  Collections, all optional at apply time:
    'template_stats' (model state): EMA usage per template and, for 'ema', the
      k-means sums. When mutable (training), they are updated, templates used
      by fewer than `reseed_threshold` queries per step are re-seeded from
      random real queries, and the library change is sown into
      'param_updates', which the train step adds after the optimizer update.
    'template_memory': when mutable, the template outputs of this context
      are stored; when given, they answer the queries instead of k and v:
      later queries attend to the stored context (memory-in-memory
      inference, inference/template_memory.py).
  q, k, v: [batch, length, heads, head_dim] -> same shape.

  Decoding (causal, `positions` given, see `SMIBlock`): the cache is every
  template's running softmax (max, total, weighted) over the current segment
  (the whole context for 'transformer'), O(K * head_dim) per head: prefill
  returns (out, cache); a step takes q, k, v [batch, 1, heads, head_dim].
  """
  config: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, q, k, v, mask, positions=None, cache=None):
    cfg = self.config
    library = self.param(
        'library', nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                ('heads', 'templates', 'kv')),
        (cfg.num_heads, cfg.num_templates, cfg.head_dim), cfg.storage_dtype)
    if cache is not None:
      return self._decode_step(library, q, k, v, positions, cache)
    ema = cfg.template_update == 'ema'
    templates = jax.lax.stop_gradient(library) if ema else library
    assignments = templates_lib.assign_templates(jax.lax.stop_gradient(q),
                                                 templates)
    segment_len = None if cfg.family == 'transformer' else cfg.segment_len
    outputs = self._outputs(templates, k, v, mask, segment_len)
    routing = template_learning.soft_routing(
        q, templates, assignments, temperature=cfg.routing_temperature)
    losses = template_learning.vq_losses(q, templates, assignments, mask=mask)
    loss = cfg.commitment_cost * losses['commitment']
    self.sow('losses', 'templates', loss if ema else loss + losses['codebook'])
    self.sow('intermediates', 'assignments', assignments)
    if self.is_mutable_collection(STATS):
      self._update_library(library, q, assignments, mask)
    if self.causal:
      out = template_learning.route_per_position(routing, outputs).astype(
          q.dtype)
      if positions is None:
        return out
      start = (jnp.zeros_like(positions) if segment_len is None
               else positions // segment_len * segment_len)
      return out, dict(zip(_RUNNING, templates_lib.causal_template_state(
          library, k, v, start=start, stop=positions)))
    return template_learning.route(routing, outputs, segment_len).astype(
        q.dtype)

  def _decode_step(self, library, q, k, v, positions, cache):
    """q, k, v: [batch, 1, heads, head_dim] at `positions` [batch]."""
    cfg = self.config
    reset = (positions == 0 if cfg.family == 'transformer'
             else positions % cfg.segment_len == 0)
    state, outputs = templates_lib.causal_template_step(
        library, tuple(cache[name] for name in _RUNNING), k[:, 0], v[:, 0],
        reset=reset)
    assignments = templates_lib.assign_templates(q, library)  # [b, 1, heads]
    out = jnp.take_along_axis(outputs, assignments[:, 0, :, None, None],
                              axis=2)[:, :, 0]
    return out[:, None].astype(q.dtype), dict(zip(_RUNNING, state))

  def _outputs(self, templates, k, v, mask, segment_len):
    """Template outputs of this context, or of the one in template memory."""
    if self.causal:
      return templates_lib.causal_template_outputs(
          templates, k, v, mask=mask, segment_len=segment_len)
    store = (self.is_mutable_collection(TEMPLATE_MEMORY)
             and not self.is_initializing())
    if self.has_variable(TEMPLATE_MEMORY, 'outputs') and not store:
      stored = self.get_variable(TEMPLATE_MEMORY, 'outputs')
      batch, length = k.shape[:2]
      needed = 1 if segment_len is None else -(-length // segment_len)
      held = 1 if segment_len is None else stored.shape[1]
      if stored.shape[0] != batch or held < needed:
        raise ValueError(
            f'the template memory holds {stored.shape[0]} contexts of {held} '
            f'segment(s); inputs of shape {(batch, length)} need {batch} of '
            f'at least {needed}')
      return stored if segment_len is None else stored[:, :needed]
    if segment_len is None:
      outputs = templates_lib.template_outputs(templates, k, v, mask=mask)
    else:
      outputs = templates_lib.segment_template_outputs(
          templates, k, v, segment_len, mask=mask)
    if store:
      self.put_variable(TEMPLATE_MEMORY, 'outputs', outputs)
    return outputs

  def _update_library(self, library, q, assignments, mask):
    """One training step of the library statistics; see the class doc."""
    cfg = self.config
    heads, num_templates, head_dim = library.shape
    ema = cfg.template_update == 'ema'
    usage = self.variable(STATS, 'usage', jnp.zeros,
                          (heads, num_templates), jnp.float32)
    updates = self.variable(STATS, 'updates', jnp.zeros, (),
                            jnp.int32)
    if ema:
      sums = self.variable(STATS, 'cluster_sums', jnp.zeros,
                           (heads, num_templates, head_dim), jnp.float32)
    if self.is_initializing():
      return
    q = jax.lax.stop_gradient(q)
    library = jax.lax.stop_gradient(library)
    decay = cfg.template_decay
    if ema:
      new_usage, new_sums, moved = template_learning.ema_kmeans_update(
          usage.value, sums.value, q, assignments, decay=decay, mask=mask)
      # A template no query has reached yet keeps its place.
      new_library = jnp.where(new_usage[..., None] > 0,
                              moved.astype(library.dtype), library)
    else:
      counts = template_learning.template_usage(assignments, num_templates,
                                                mask=mask)
      new_usage = decay * usage.value + (1 - decay) * counts
      new_library = library
    steps = updates.value + 1
    # Zero-initialised EMAs are biased low by (1 - decay^steps) early on.
    bias = 1 - jnp.asarray(decay, jnp.float32) ** steps.astype(jnp.float32)
    if cfg.reseed_threshold > 0:
      new_library, dead = template_learning.reseed_dead_templates(
          new_library, new_usage / bias, q, self.make_rng('templates'),
          threshold=cfg.reseed_threshold, mask=mask)
      # A re-seeded template starts at the threshold, as if just used.
      reset = cfg.reseed_threshold * bias
      new_usage = jnp.where(dead, reset, new_usage)
      if ema:
        new_sums = jnp.where(dead[..., None], new_library * reset, new_sums)
    usage.value, updates.value = new_usage, steps
    if ema:
      sums.value = new_sums
    self.sow(PARAM_UPDATES, 'library', new_library - library,
             init_fn=lambda: None, reduce_fn=lambda _, update: update)
