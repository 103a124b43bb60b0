"""Learning-rate schedules and the optimizer, from the experiment config."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'rsqrt')
TRAINABLE = ('all', 'templates_and_head')
# Top-level parameter names of the models' output heads.
OUTPUT_HEADS = ('head', 'lm_head')
# Parameters whose name is one of these are not weight-decayed (a template
# library holds points in query space: decay would drag them to the origin).
NO_DECAY = ('bias', 'scale', 'library')


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then constant, cosine or rsqrt decay.

  rsqrt (LRA's): peak * sqrt(warmup / max(step, warmup)), so the decay starts
  at the peak where the warmup ends.
  """
  peak, warmup = config.learning_rate, config.warmup_steps
  if config.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  elif config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
        peak, max(config.num_steps - warmup, 1), alpha=config.min_lr_ratio)
  elif config.schedule == 'rsqrt':
    base = max(warmup, 1)
    decay = lambda step: peak * jnp.sqrt(
        base / jnp.maximum(jnp.asarray(step, jnp.float32) + base, base))
  else:
    raise ValueError(f'schedule must be one of {list(SCHEDULES)}, got '
                     f'{config.schedule!r}')
  if not warmup:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _names(path) -> list[str]:
  """The dict keys along a parameter's path (boxes' attributes skipped)."""
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def decay_mask(params):
  """True for parameters that get weight decay (all but NO_DECAY names)."""
  def decays(path, _):
    names = _names(path)
    return not names or names[-1] not in NO_DECAY
  return jax.tree_util.tree_map_with_path(decays, params)


def trainable_mask(params, trainable: str):
  """True for the parameters `trainable` names: all of them, or only the
  template libraries and the output head (parameter-efficient fine-tuning)."""
  def trains(path, _):
    names = _names(path)
    return (trainable == 'all' or 'library' in names
            or names[0] in OUTPUT_HEADS)
  return jax.tree_util.tree_map_with_path(trains, params)


def trainable_fraction(params, trainable: str) -> float:
  """Share of parameter values that `trainable` updates."""
  sizes = jax.tree.map(lambda p: p.size, params)
  mask = trainable_mask(params, trainable)
  total = sum(jax.tree.leaves(sizes))
  kept = sum(s for s, m in zip(jax.tree.leaves(sizes), jax.tree.leaves(mask))
             if m)
  return kept / total


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the schedule above; parameters
  outside `config.trainable` get zero updates."""
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.adam_b1,
                      b2=config.adam_b2, weight_decay=config.weight_decay,
                      mask=decay_mask, mu_dtype=jnp.dtype(config.get(
                          'first_moment_dtype', 'float32')))
  if config.grad_clip_norm:
    adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                        adamw)
  if config.trainable == 'all':
    return adamw
  labels = lambda params: jax.tree.map(
      lambda t: 'train' if t else 'freeze',
      trainable_mask(params, config.trainable))
  return optax.multi_transform({'train': adamw, 'freeze': optax.set_to_zero()},
                               labels)
