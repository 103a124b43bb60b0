"""Learning the template library: VQ-VAE losses, EMA k-means, re-seeding,
and the straight-through routing that gives queries a task gradient.

The template layer (layers.TemplateAttention) assigns each query its nearest
template; the forward pass uses exactly that template's output, while the
gradient flows as if the query were softly routed over all templates.
Shapes as in templates.py.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax import checks
from simmim_jax.ops import templates as templates_lib
from simmim_jax.ops.segments import merge_segments
from simmim_jax.ops.segments import score_dtype
from simmim_jax.ops.segments import split_segments

# Laplace smoothing of EMA cluster sizes, as in VQ-VAE-2 / sonnet's EMA VQ.
_EMA_EPSILON = 1e-5


def soft_routing(queries: jax.Array, templates: jax.Array,
                 assignments: jax.Array, *, temperature: float) -> jax.Array:
  """Straight-through routing weights [batch, length, heads, K].

  The value is one_hot(assignments) exactly; the gradient is that of
  softmax_k(-||q - a_k||^2 / temperature), so the task loss reaches the
  queries (and the templates' positions) through the hard assignment.
  """
  templates_lib.check_against_templates(queries, 'queries', templates)
  dtype = score_dtype(jnp.result_type(queries.dtype, templates.dtype))
  q, a = queries.astype(dtype), templates.astype(dtype)
  distances = (jnp.sum(q * q, axis=-1, keepdims=True)
               - 2 * jnp.einsum('blhd,hkd->blhk', q, a)
               + jnp.sum(a * a, axis=-1)[None, None])
  soft = jax.nn.softmax(-distances / temperature, axis=-1)
  hard = jax.nn.one_hot(assignments, templates.shape[1], dtype=dtype)
  return hard + soft - jax.lax.stop_gradient(soft)


def route(routing: jax.Array, outputs: jax.Array,
          segment_len: Optional[int] = None) -> jax.Array:
  """Template outputs mixed per query by `routing` [batch, length, heads, K].

  outputs: `template_outputs` [batch, heads, K, d], or with `segment_len`
  `segment_template_outputs` [batch, m, heads, K, d]. With one-hot routing
  this equals gathering each query's template output.
  """
  length = routing.shape[1]
  if segment_len is None:
    return jnp.einsum('blhk,bhkd->blhd', routing.astype(outputs.dtype), outputs)
  routing = split_segments(routing, segment_len).astype(outputs.dtype)
  mixed = jnp.einsum('bmlhk,bmhkd->bmlhd', routing, outputs)
  return merge_segments(mixed, length)


def route_per_position(routing: jax.Array, outputs: jax.Array) -> jax.Array:
  """`route` for `causal_template_outputs` [batch, length, heads, K, d]."""
  return jnp.einsum('blhk,blhkd->blhd', routing.astype(outputs.dtype), outputs)


def template_usage(assignments: jax.Array, num_templates: int, *,
                   mask: Optional[jax.Array] = None) -> jax.Array:
  """float32 [heads, K]: how many real queries each template was assigned.

  assignments: [batch, length, heads] int; mask: optional [batch, length].
  """
  return jnp.sum(_masked_one_hot(assignments, num_templates, mask,
                                 jnp.float32), axis=(0, 1))


def _masked_one_hot(assignments, num_templates, mask, dtype):
  """[batch, length, heads, K]: one-hot assignments, zero at padding."""
  one_hot = jax.nn.one_hot(assignments, num_templates, dtype=dtype)
  if mask is None:
    return one_hot
  return one_hot * mask.astype(dtype)[:, :, None, None]


def _selected_templates(templates, assignments):
  """templates[h, assignments[b, t, h]]: [batch, length, heads, head_dim]."""
  heads = jnp.arange(templates.shape[0])
  return templates[heads[None, None, :], assignments]


def quantize(queries: jax.Array,
             templates: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Nearest templates with a straight-through gradient (VQ-VAE).

  Args: as `assign_templates`.

  Returns:
    assignments: int32 [batch, length, heads].
    quantized: [batch, length, heads, head_dim] in queries' dtype; its value
      is templates[h, assignments], its gradient goes to the queries unchanged
      and not to the templates (train them with `vq_losses` or EMA k-means).
  """
  assignments = templates_lib.assign_templates(queries, templates)
  selected = _selected_templates(templates, assignments).astype(queries.dtype)
  return assignments, queries + jax.lax.stop_gradient(selected - queries)


def vq_losses(queries: jax.Array, templates: jax.Array,
              assignments: jax.Array, *,
              mask: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """VQ-VAE losses: means over batch, real positions and heads of
    codebook   = ||sg(q) - a_c||^2  (gradient to the templates only)
    commitment = ||q - sg(a_c)||^2  (gradient to the queries only),
  squared distances summed over head_dim; sg = stop_gradient.

  Args: queries [batch, length, heads, head_dim], templates [heads, K,
    head_dim], assignments [batch, length, heads] int, mask optional
    [batch, length] bool (True = real position).

  Returns: {'codebook', 'commitment'}: float32 (or wider) scalars, 0 if no
    position is real.
  """
  templates_lib.check_against_templates(queries, 'queries', templates)
  templates_lib.check_assignments(assignments, queries.shape[:3],
                                  templates.shape[1])
  checks.mask(mask, queries.shape[:2])
  dtype = score_dtype(jnp.result_type(queries.dtype, templates.dtype))
  q = queries.astype(dtype)
  selected = _selected_templates(templates, assignments).astype(dtype)
  sg = jax.lax.stop_gradient
  weight = (jnp.ones(q.shape[:2], dtype) if mask is None
            else mask.astype(dtype))[..., None]  # [batch, length, 1]
  count = jnp.maximum(jnp.sum(weight) * q.shape[2], 1.0)

  def mean_sq(x, y):
    return jnp.sum(weight * jnp.sum((x - y) ** 2, axis=-1)) / count

  return {'codebook': mean_sq(sg(q), selected),
          'commitment': mean_sq(q, sg(selected))}


def ema_kmeans_update(cluster_sizes: jax.Array, cluster_sums: jax.Array,
                      queries: jax.Array, assignments: jax.Array, *,
                      decay: float, mask: Optional[jax.Array] = None
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One EMA k-means step on the templates (VQ-VAE-2 / sonnet EMA VQ):
    sizes = decay * sizes + (1 - decay) * counts
    sums  = decay * sums  + (1 - decay) * (sum of the queries assigned)
    templates = sums / ((sizes + eps) / (n + K eps) * n)
  with n the head's total size: Laplace smoothing keeps an empty cluster's
  divisor nonzero. No gradient flows through the update.

  Args:
    cluster_sizes: [heads, K]; cluster_sums: [heads, K, head_dim].
    queries: [batch, length, heads, head_dim]; assignments: [batch, length,
      heads] int; mask: optional [batch, length] bool, only real ones count.
    decay: in [0, 1].

  Returns: (new_sizes, new_sums, new_templates [heads, K, head_dim]), typed
    as cluster_sizes, cluster_sums and cluster_sums.
  """
  heads, num_templates, _ = templates_lib.check_templates(cluster_sums,
                                                          'cluster_sums')
  templates_lib.check_sizes(cluster_sizes, heads, num_templates)
  templates_lib.check_against_templates(queries, 'queries', cluster_sums)
  templates_lib.check_assignments(assignments, queries.shape[:3], num_templates)
  checks.mask(mask, queries.shape[:2])
  if checks.is_concrete(decay) and np.ndim(decay) == 0:
    checks.number(float(decay), 'decay', high=1, high_open=False)
  dtype = score_dtype(jnp.result_type(queries.dtype, cluster_sums.dtype))
  one_hot = _masked_one_hot(assignments, num_templates, mask, dtype)
  q = jax.lax.stop_gradient(queries).astype(dtype)
  counts = jnp.sum(one_hot, axis=(0, 1))  # [heads, K]
  sums = jnp.einsum('blhk,blhd->hkd', one_hot, q,
                    precision=jax.lax.Precision.HIGHEST)
  kept = jnp.asarray(decay, dtype)  # the old statistics' share
  new_sizes = kept * cluster_sizes.astype(dtype) + (1 - kept) * counts
  new_sums = kept * cluster_sums.astype(dtype) + (1 - kept) * sums
  total = jnp.sum(new_sizes, axis=-1, keepdims=True)
  smoothed = ((new_sizes + _EMA_EPSILON)
              / (total + num_templates * _EMA_EPSILON) * total)
  new_templates = new_sums / smoothed[..., None]
  return (new_sizes.astype(cluster_sizes.dtype),
          new_sums.astype(cluster_sums.dtype),
          new_templates.astype(cluster_sums.dtype))


def reseed_dead_templates(templates: jax.Array, cluster_sizes: jax.Array,
                          queries: jax.Array, rng: jax.Array, *,
                          threshold: float, mask: Optional[jax.Array] = None
                          ) -> tuple[jax.Array, jax.Array]:
  """Replaces templates whose EMA size is below `threshold` by random real
  queries of the same head (fixed shapes: jit-compatible).

  A head's reseeded templates are distinct queries while it has enough real
  ones; with no real position nothing changes. With EMA k-means, also reset
  the re-seeded templates' statistics (e.g. size = threshold, sums = template
  * size, as layers.TemplateAttention does), or the next `ema_kmeans_update`
  moves them back.

  Args:
    templates: [heads, K, head_dim]; cluster_sizes: [heads, K] EMA counts.
    queries: [batch, length, heads, head_dim]; mask: optional [batch, length]
      bool, True = real position; rng: a jax.random key.
    threshold: templates with cluster_sizes < threshold are dead.

  Returns: (templates with the dead ones replaced, bool [heads, K]: which
    were replaced).
  """
  heads, num_templates, head_dim = templates_lib.check_templates(templates)
  templates_lib.check_sizes(cluster_sizes, heads, num_templates)
  templates_lib.check_against_templates(queries, 'queries', templates)
  checks.mask(mask, queries.shape[:2])
  positions = queries.shape[0] * queries.shape[1]
  real = (jnp.ones((positions,), bool) if mask is None
          else mask.astype(bool).reshape(positions))
  num_real = jnp.sum(real.astype(jnp.int32))
  # Random keys on real positions, -inf elsewhere: top_k draws distinct real
  # positions per head, ahead of every padded one.
  keys = jnp.where(real, jax.random.uniform(rng, (heads, positions)), -jnp.inf)
  drawn = min(num_templates, positions)
  _, chosen = jax.lax.top_k(keys, drawn)  # [heads, drawn]
  usable = jnp.maximum(jnp.minimum(num_real, drawn), 1)
  chosen = chosen[:, jnp.arange(num_templates) % usable]  # [heads, K]
  flat = jax.lax.stop_gradient(queries).reshape(positions, heads, head_dim)
  candidates = flat[chosen, jnp.arange(heads)[:, None]]  # [heads, K, head_dim]
  dead = (cluster_sizes < threshold) & (num_real > 0)
  new_templates = jnp.where(dead[..., None],
                            candidates.astype(templates.dtype), templates)
  return new_templates, dead
