"""Masked-token pretraining: which positions to hide, and what replaces them.

Pure functions on one batch; every row draws from its own key, so a row's
masking does not depend on what else is in its batch or on the mesh.

  token:   BERT's recipe: `ratio` of the real positions chosen at random; of
           those 80% become the mask token, 10% a random real token, 10%
           stay as they are.
  span:    contiguous spans (lengths uniform in [1, 2 * mean_span - 1], so of
           mean `mean_span`) until about `ratio` of the positions is covered;
           every chosen position becomes the mask token.
  segment: whole segments of the model's `segment_len`, about `ratio` of
           them; their information can only come through the other
           segments' states (the SimMIM-specific variant).

Padding is never chosen, and only chosen positions are scored.
"""

import dataclasses

import jax
import jax.numpy as jnp

MODES = ('token', 'span', 'segment')


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  """How to mask. mask_id is the model's last token id; the data's ids are
  1 .. mask_id - 1 (0 pads)."""
  ratio: float
  mode: str
  mean_span: int
  segment_len: int
  mask_id: int


def _choose(key: jax.Array, eligible: jax.Array, count: jax.Array) -> jax.Array:
  """[n] bool: `count` of the eligible positions, uniformly at random."""
  scores = jnp.where(eligible, jax.random.uniform(key, eligible.shape), 2.0)
  ranks = jnp.argsort(jnp.argsort(scores))
  return eligible & (ranks < count)


def _row_positions(key: jax.Array, mask: jax.Array,
                   spec: MaskingSpec) -> jax.Array:
  """[n] bool chosen positions of one row; mask: [n] bool real tokens."""
  length = jnp.sum(mask)
  n = mask.shape[0]
  if spec.mode == 'token':
    count = jnp.maximum(1, jnp.round(spec.ratio * length)).astype(jnp.int32)
    return _choose(key, mask, count)
  if spec.mode == 'span':
    starts_key, lengths_key = jax.random.split(key)
    count = jnp.maximum(1, jnp.round(spec.ratio * length / spec.mean_span)
                        ).astype(jnp.int32)
    starts = _choose(starts_key, mask, count)
    span = jax.random.randint(lengths_key, (n,), 1, 2 * spec.mean_span)
    # +1 where a span starts, -1 where it ends; covered where the sum > 0.
    ends = jnp.minimum(jnp.arange(n) + span, n)
    starts = starts.astype(jnp.int32)
    delta = jnp.zeros(n + 1, jnp.int32).at[jnp.arange(n)].add(starts)
    delta = delta.at[ends].add(-starts)
    return mask & (jnp.cumsum(delta)[:n] > 0)
  num_segments = -(-n // spec.segment_len)
  segment_of = jnp.arange(n) // spec.segment_len
  real_segments = jnp.arange(num_segments) * spec.segment_len < length
  count = jnp.maximum(1, jnp.round(spec.ratio * jnp.sum(real_segments))
                      ).astype(jnp.int32)
  chosen = _choose(key, real_segments, count)
  return mask & chosen[segment_of]


def choose_positions(keys: jax.Array, mask: jax.Array,
                     spec: MaskingSpec) -> jax.Array:
  """keys: [batch] PRNG keys; mask: [batch, n] bool (padding at the end).
  Returns [batch, n] bool: the positions to hide and score."""
  return jax.vmap(lambda k, m: _row_positions(k, m, spec))(keys, mask)


def corrupt(keys: jax.Array, tokens: jax.Array, chosen: jax.Array,
            spec: MaskingSpec) -> jax.Array:
  """tokens [batch, n] with the chosen positions replaced (see MODES)."""
  if spec.mode != 'token':
    return jnp.where(chosen, spec.mask_id, tokens)

  def row(key, tokens, chosen):
    kind_key, token_key = jax.random.split(key)
    kind = jax.random.uniform(kind_key, tokens.shape)
    random_tokens = jax.random.randint(token_key, tokens.shape, 1,
                                       spec.mask_id)
    out = jnp.where(kind < 0.8, spec.mask_id,
                    jnp.where(kind < 0.9, random_tokens, tokens))
    return jnp.where(chosen, out, tokens)
  return jax.vmap(row)(keys, tokens, chosen)


def content_keys(tokens: jax.Array, seed: int = 0) -> jax.Array:
  """[batch] keys from each row's tokens: evaluation masks an example the
  same way in every eval, batch and mesh."""
  weights = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.uint32)
  digest = jnp.sum(tokens.astype(jnp.uint32) * weights * jnp.uint32(2654435761),
                   axis=1)
  base = jax.random.key(seed)
  return jax.vmap(lambda d: jax.random.fold_in(base, d))(digest)


def mask_batch(keys: jax.Array, tokens: jax.Array, mask: jax.Array,
               spec: MaskingSpec) -> tuple[jax.Array, jax.Array]:
  """(corrupted tokens, chosen positions), both [batch, n]."""
  choose_keys, corrupt_keys = jnp.split(
      jax.vmap(lambda k: jax.random.split(k, 2))(keys), 2, axis=1)
  chosen = choose_positions(choose_keys[:, 0], mask.astype(bool), spec)
  return corrupt(corrupt_keys[:, 0], tokens, chosen, spec), chosen
