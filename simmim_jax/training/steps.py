"""Losses and the train/eval step functions (pure; the trainer jits them).

Metrics are accumulated on device as sums so that nothing is fetched to the
host between logging steps; `summarize` turns sums into means.
"""

import math
from typing import Any, Callable, Optional

from flax import struct
from flax import traverse_util
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from simmim_jax.models import template_layer
from simmim_jax.ops import masking as masking_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Variable collections that persist across steps besides 'params'.
STATE_COLLECTIONS = (template_layer.STATS,)


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state and model_state: the other variable
  collections the model updates while training, e.g. {'template_stats': ...}
  (apply_fn and tx are static)."""
  model_state: Any = struct.field(default_factory=dict)


def model_state(variables: dict[str, Any]) -> dict[str, Any]:
  """The STATE_COLLECTIONS part of a model's variables."""
  return {name: variables[name] for name in STATE_COLLECTIONS
          if name in variables}


def apply_param_updates(params: Any, updates: Any) -> Any:
  """params + updates, where `updates` mirrors a sub-tree of params (what
  layers sow into 'param_updates', e.g. moved or re-seeded templates)."""
  if not updates:
    return params
  flat = traverse_util.flatten_dict(params)
  for path, update in traverse_util.flatten_dict(updates).items():
    flat[path] = flat[path] + update.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def masked_batch(batch: Batch, task: str, spec: masking_lib.MaskingSpec,
                 keys: jax.Array) -> Batch:
  """A batch for masked-token prediction: `tokens` corrupted, `targets`
  the originals, `chosen` the positions scored. A dual task's two inputs are
  stacked as rows. keys: [rows] PRNG keys, or None for content keys (eval)."""
  tokens, mask, weight = batch['tokens'], batch['mask'], batch['weight']
  if task == 'dual':
    tokens = jnp.concatenate([tokens, batch['other_tokens']])
    mask = jnp.concatenate([mask, batch['other_mask']])
    weight = jnp.concatenate([weight, weight])
  if keys is None:
    keys = masking_lib.content_keys(tokens)
  corrupted, chosen = masking_lib.mask_batch(keys, tokens, mask, spec)
  return {'tokens': corrupted, 'mask': mask, 'targets': tokens,
          'chosen': chosen, 'weight': weight}


def model_inputs(batch: Batch, task: str) -> tuple[jax.Array, ...]:
  """The positional model arguments for a batch of `task`."""
  if task == 'masked':
    return batch['tokens'], batch['mask']
  if task == 'dual':
    return (batch['tokens'], batch['other_tokens'], batch['mask'],
            batch['other_mask'])
  if task == 'seq2seq':
    return (batch['tokens'], batch['targets'], batch['mask'],
            batch['target_mask'])
  return batch['tokens'], batch['mask']


def _cross_entropy(logits, labels, label_smoothing: float):
  """(smoothed loss, plain negative log-likelihood), each [...]."""
  logits = logits.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if not label_smoothing:
    return nll, nll
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets), nll


def metric_sums(logits: jax.Array, batch: Batch, task: str,
                label_smoothing: float = 0.0) -> Metrics:
  """Sums over the batch: loss, nll, correct predictions, count, tokens.

  Classification counts examples (weighted by `weight`); the LM counts
  predicted tokens: token t+1 is predicted from tokens <= t where both are real
  (seq2seq: the same over `targets`, teacher-forced); 'masked' (see
  masked_batch) counts the chosen positions, and 'recall' the positions whose
  `targets` id is not 0 (output t, from tokens <= t, predicts it).
  """
  tokens = batch['mask'] * batch['weight'][:, None]
  if task == 'masked':
    labels = batch['targets']
    weights = batch['chosen'] * batch['weight'][:, None]
  elif task == 'recall':
    labels = batch['targets']
    weights = (labels > 0) * batch['weight'][:, None]
  elif task in ('lm', 'seq2seq'):
    sequence, mask = ((batch['targets'], batch['target_mask'])
                      if task == 'seq2seq' else
                      (batch['tokens'], batch['mask']))
    labels = sequence[:, 1:]
    logits = logits[:, :-1]
    weights = (mask[:, 1:] & mask[:, :-1]).astype(
        jnp.float32) * batch['weight'][:, None]
    if task == 'seq2seq':
      tokens = jnp.sum(tokens) + jnp.sum(mask * batch['weight'][:, None])
  else:
    labels, weights = batch['label'], batch['weight']
  loss, nll = _cross_entropy(logits, labels, label_smoothing)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(loss * weights),
      'nll_sum': jnp.sum(nll * weights),
      'correct_sum': jnp.sum(correct * weights),
      'count': jnp.sum(weights),
      'tokens': jnp.sum(tokens),
  }


# Tasks whose loss and accuracy count only some positions name them so.
METRIC_PREFIX = {'masked': 'masked_', 'recall': 'query_'}
SUM_NAMES = ('loss_sum', 'nll_sum', 'correct_sum', 'count', 'tokens')


def empty_metrics(train: bool = True, masked: bool = False) -> Metrics:
  """A zero accumulator; the train one also counts steps and remembers the
  first step whose loss was not finite (-1 = none yet); the masked eval one
  also counts the baseline's correct predictions."""
  metrics = {name: jnp.zeros((), jnp.float32) for name in SUM_NAMES}
  if masked and not train:
    metrics['baseline_correct_sum'] = jnp.zeros((), jnp.float32)
  if train:
    metrics['aux_loss_sum'] = jnp.zeros((), jnp.float32)
    metrics['steps'] = jnp.zeros((), jnp.float32)
    metrics['first_nonfinite_step'] = jnp.full((), -1, jnp.int32)
  return metrics


def make_train_step(task: str, label_smoothing: float = 0.0,
                    masking: Optional[masking_lib.MaskingSpec] = None
                    ) -> Callable:
  """Returns train_step(state, batch, metrics, dropout_key) -> (state, metrics).

  Dropout randomness is fold_in(dropout_key, step), so a resumed run draws the
  same masks as an uninterrupted one. With `masking` the step trains
  masked-token prediction on the batch's inputs (labels unused).
  """
  def train_step(state: TrainState, batch: Batch, metrics: Metrics,
                 dropout_key: jax.Array):
    rng = jax.random.fold_in(dropout_key, state.step)
    step_task = task
    if masking is not None:
      rows = batch['tokens'].shape[0] * (2 if task == 'dual' else 1)
      batch = masked_batch(batch, task, masking,
                           jax.random.split(jax.random.fold_in(rng, 2), rows))
      step_task = 'masked'

    def loss_fn(params):
      # Layers may sow auxiliary losses (e.g. the template library's VQ
      # loss), update their model_state and propose parameter updates.
      logits, variables = state.apply_fn(
          {'params': params, **state.model_state},
          *model_inputs(batch, step_task),
          deterministic=False,
          rngs={'dropout': rng, 'templates': jax.random.fold_in(rng, 1)},
          mutable=['losses', template_layer.PARAM_UPDATES, *STATE_COLLECTIONS])
      sums = metric_sums(logits, batch, step_task, label_smoothing)
      aux_loss = sum((jnp.sum(x) for x in
                      jax.tree.leaves(variables.get('losses', {}))),
                     jnp.zeros((), jnp.float32))
      sums['aux_loss_sum'] = aux_loss
      task_loss = sums['loss_sum'] / jnp.maximum(sums['count'], 1.0)
      return task_loss + aux_loss, (sums, variables)

    (loss, (sums, variables)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    new_state = new_state.replace(
        params=apply_param_updates(
            new_state.params, variables.get(template_layer.PARAM_UPDATES)),
        model_state=model_state(variables))
    bad = ~jnp.isfinite(loss) & (metrics['first_nonfinite_step'] < 0)
    updated = {name: metrics[name] + sums[name] for name in sums}
    updated['steps'] = metrics['steps'] + 1
    updated['first_nonfinite_step'] = jnp.where(
        bad, state.step.astype(jnp.int32), metrics['first_nonfinite_step'])
    return new_state, updated

  return train_step


def make_eval_step(apply_fn: Callable, task: str,
                   masking: Optional[masking_lib.MaskingSpec] = None,
                   baseline_id: int = -1) -> Callable:
  """Returns eval_step(params, batch, metrics) -> metrics (sums added).

  With `masking`, each example is masked by a key from its own tokens (the
  same in every eval), and `baseline_correct_sum` counts the chosen
  positions whose token is `baseline_id` (the always-this-token baseline).
  """
  def eval_step(params: Any, batch: Batch, metrics: Metrics) -> Metrics:
    step_task = task
    if masking is not None:
      batch = masked_batch(batch, task, masking, None)
      step_task = 'masked'
    logits = apply_fn({'params': params}, *model_inputs(batch, step_task))
    sums = metric_sums(logits, batch, step_task)
    if masking is not None:
      sums['baseline_correct_sum'] = jnp.sum(
          (batch['targets'] == baseline_id) * batch['chosen']
          * batch['weight'][:, None])
    return {name: metrics[name] + sums[name] for name in sums}
  return eval_step


def summarize(sums: dict[str, float], task: str) -> dict[str, float]:
  """Means from accumulated sums: loss, accuracy, and bits per byte (LM);
  'masked' and 'recall' name them masked_* and query_*."""
  count = max(float(sums['count']), 1.0)
  prefix = METRIC_PREFIX.get(task, '')
  out = {f'{prefix}loss': float(sums['loss_sum']) / count,
         f'{prefix}accuracy': float(sums['correct_sum']) / count}
  if 'baseline_correct_sum' in sums:
    out['masked_baseline_accuracy'] = (
        float(sums['baseline_correct_sum']) / count)
  if task == 'lm':
    out['bits_per_byte'] = float(sums['nll_sum']) / count / math.log(2)
  if float(sums.get('aux_loss_sum', 0.0)):
    out['aux_loss'] = float(sums['aux_loss_sum']) / float(sums['steps'])
  return out
