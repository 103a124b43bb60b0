"""train_and_evaluate: the whole training run, importable from a notebook.

State is created sharded (eval_shape -> shardings -> jit(init)); the train
step is one jit over a ('data', 'model') mesh. The run resumes from the
latest checkpoint in DIR/checkpoints, stops cleanly on SIGTERM after saving,
and stops with an error naming the step if the loss stops being finite.
"""

import json
import logging
import os
import signal
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils

from simmim_jax.training import checkpoints
from simmim_jax import cost
from simmim_jax import data
from simmim_jax.training import distill
from simmim_jax.ops import masking
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import optim
from simmim_jax.inference import seq2seq_eval
from simmim_jax.training import sharding
from simmim_jax.training import steps
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.training.experiment_config import validate_config
from simmim_jax.models.models import build_model

HEADS = {'classification': 'classifier', 'dual': 'dual_encoder', 'lm': 'lm',
         'seq2seq': 'seq2seq'}


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


def model_config(config: ml_collections.ConfigDict,
                 datasets: data.Datasets) -> ModelConfig:
  """config.model plus the fields the data decides (checked if given).

  Masked pretraining, and fine-tuning from it, add one token id after the
  data's: the mask token."""
  fields = config.model.to_dict()
  masked = config.objective == 'masked'
  vocab = datasets.vocab_size + (masked or distill.pretrained_objective(
      config.init_from) == 'masked')
  derived = {'vocab_size': vocab,
             'head': 'masked' if masked else HEADS[datasets.task],
             'max_len': config.data.max_len}
  if datasets.task in ('classification', 'dual'):
    derived['num_classes'] = datasets.num_classes
  if datasets.task == 'seq2seq':
    derived['target_len'] = config.data.target_max_len
  for name, value in derived.items():
    if fields.get(name) is not None and fields[name] != value:
      raise ValueError(f'model.{name}={fields[name]!r} but the data needs '
                       f'{value!r}; leave it unset')
    fields[name] = value
  return ModelConfig.from_dict(fields)


def _dummy_inputs(cfg: ModelConfig, task: str) -> dict[str, jax.Array]:
  tokens = jnp.zeros((1, cfg.max_len), jnp.int32)
  mask = jnp.ones((1, cfg.max_len), bool)
  batch = {'tokens': tokens, 'mask': mask}
  if task == 'dual':
    batch.update(other_tokens=tokens, other_mask=mask)
  if task == 'seq2seq':
    batch.update(targets=jnp.zeros((1, cfg.target_len), jnp.int32),
                 target_mask=jnp.ones((1, cfg.target_len), bool))
  return batch


class _IteratorSnapshot:
  """The data iterator's position at save time (saves may finish later)."""

  def __init__(self, iterator):
    self._state = iterator.get_state()

  def get_state(self):
    return self._state


class _Preemption:
  """Remembers a SIGTERM until the loop can save and stop."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint and stopping')
    self.requested = True

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[steps.TrainState, dict[str, Any]]:
  """Trains (or resumes) the run in `workdir`.

  Returns:
    (final train state, results); results are also written to
    DIR/results.json. A run stopped by SIGTERM returns {'preempted': True,
    'step': ...} as results, after saving its checkpoint.
  """
  validate_config(config)
  start_time = time.time()
  workdir = os.path.abspath(workdir)
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  task = datasets.task
  cfg = model_config(config, datasets)
  model = build_model(cfg)
  spec, baseline_id = None, -1
  if config.objective == 'masked':
    if task not in ('classification', 'dual'):
      raise ValueError(f"objective='masked' needs a classification or dual "
                       f"task's inputs; this data's task is {task!r}")
    spec = masking.MaskingSpec(
        ratio=config.masking.ratio, mode=config.masking.mode,
        mean_span=config.masking.mean_span, segment_len=cfg.segment_len,
        mask_id=cfg.vocab_size - 1)
    baseline_id = datasets.most_frequent_input_token()
  # What the steps compute: the data's task, or masked-token prediction.
  step_task = 'masked' if spec is not None else task
  mesh = sharding.mesh_from_config(config)
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % mesh.shape['data']:
      raise ValueError(f"{name} {config[name]} is not divisible by the mesh's "
                       f"data axis ({mesh.shape['data']})")
  tx = optim.make_optimizer(config)

  def init_state(rng):
    variables = model.init(rng, *steps.model_inputs(_dummy_inputs(cfg, task),
                                                    step_task))
    return steps.TrainState.create(
        apply_fn=model.apply, params=variables['params'], tx=tx,
        model_state=steps.model_state(variables))

  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  boxed = jax.eval_shape(init_state, init_key)
  state_sharding = sharding.state_shardings(boxed, mesh, config.mesh.rules)
  abstract_state = jax.tree.map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      nn.unbox(boxed), state_sharding)

  checkpointer = checkpoints.Checkpointer(
      workdir, keep=config.keep_checkpoints, best_metric=config.best_metric,
      best_mode=config.best_mode)
  train_iter = iter(datasets.train)
  start_step = checkpointer.latest_step()
  if start_step is None:
    start_step = 0
    state = jax.jit(lambda r: nn.unbox(init_state(r)),
                    out_shardings=state_sharding)(init_key)
    if config.init_from:  # the optimizer state is still zeros: keep it
      state = state.replace(params=jax.device_put(
          distill.initial_params(config, model, datasets, state.params),
          state_sharding.params))
  else:
    logging.info('resuming from step %d', start_step)
    state = checkpointer.restore(
        start_step, abstract_state, train_iter,
        config_changes=checkpoints.model_config_changes(config, workdir))
  checkpoints.save_config(config, workdir)

  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(
      steps.make_train_step(task, config.label_smoothing, spec),
      in_shardings=(state_sharding, batch_sharding, replicated, replicated),
      out_shardings=(state_sharding, replicated), donate_argnums=(0, 2))
  eval_step = jax.jit(
      steps.make_eval_step(model.apply, task, spec, baseline_id),
      in_shardings=(state_sharding.params, batch_sharding, replicated),
      out_shardings=replicated, donate_argnums=(2,))
  schedule = optim.learning_rate_schedule(config)

  def evaluate(params, split: str, generation: bool = True
               ) -> dict[str, float]:
    sums = jax.device_put(
        steps.empty_metrics(train=False, masked=spec is not None), replicated)
    for local_batch in datasets.eval_batches(split):
      sums = eval_step(params, sharding.global_batch(local_batch, mesh), sums)
    metrics = steps.summarize(jax.device_get(sums), step_task)
    if task == 'seq2seq' and generation:
      metrics.update(seq2seq_eval.generation_metrics(
          model, params, datasets, split, config.decode_examples))
    return metrics

  logger = metrics_lib.MetricLogger(workdir, total_steps=config.num_steps,
                                    start_step=start_step,
                                    progress=config.progress)
  preemption = _Preemption()
  best: Optional[dict[str, Any]] = _best_so_far(workdir, config, start_step)
  eval_metrics: dict[str, float] = {}
  accumulated = jax.device_put(steps.empty_metrics(), replicated)
  window_start = time.perf_counter()
  step = start_step
  try:
    while step < config.num_steps:
      batch = sharding.global_batch(next(train_iter), mesh)
      state, accumulated = train_step(state, batch, accumulated, dropout_key)
      step += 1
      is_last = step == config.num_steps
      evaluate_now = step % config.eval_every == 0 or is_last
      save_now = step % config.checkpoint_every == 0 or evaluate_now
      preempted = preemption.any_process() if (
          jax.process_count() == 1 or step % config.log_every == 0) else False
      if step % config.log_every == 0 or save_now or preempted:
        sums = jax.device_get(accumulated)
        _check_finite(sums, checkpointer)
        if step % config.log_every == 0 or is_last:
          seconds = time.perf_counter() - window_start
          train_metrics = {f'train_{k}': v
                           for k, v in steps.summarize(sums, step_task).items()}
          train_metrics.update(
              learning_rate=float(schedule(step - 1)),
              step_seconds=seconds / max(float(sums['steps']), 1.0),
              tokens_per_second=float(sums['tokens']) / seconds)
          logger.write(step, train_metrics)
          logger.show_progress(step, {'loss': train_metrics[
              f'train_{"masked_" if spec else ""}loss']})
          accumulated = jax.device_put(steps.empty_metrics(), replicated)
          window_start = time.perf_counter()
      if evaluate_now:
        eval_metrics = {f'eval_{k}': v for k, v in
                        evaluate(state.params, config.eval_split).items()}
        logger.write(step, eval_metrics)
        if best is None or _better(eval_metrics[config.best_metric],
                                   best['value'], config.best_mode):
          best = {'step': step, 'value': eval_metrics[config.best_metric],
                  'metrics': eval_metrics}
      if save_now or preempted:
        checkpointer.save(step, state, _IteratorSnapshot(train_iter),
                          eval_metrics if evaluate_now else None)
      if preempted and not is_last:
        checkpointer.wait()
        logging.warning('preempted: saved step %d in %s', step,
                        checkpointer.directory)
        return state, {'preempted': True, 'step': step}
  finally:
    preemption.restore()
    checkpointer.wait()
    checkpointer.close()
    logger.close()

  if not eval_metrics:  # resumed a finished run
    eval_metrics = {f'eval_{k}': v for k, v in
                    evaluate(state.params, config.eval_split).items()}
  test = {}
  if config.test_split:
    # seq2seq: test_report below decodes the test split.
    test = {f'test_{k}': v for k, v in
            evaluate(state.params, config.test_split, False).items()}
  results = {
      'step': step,
      'final': eval_metrics,
      'best': best,
      'test': test,
      'wall_seconds': time.time() - start_time,
      'model_parameters': int(sum(np.prod(x.shape)
                                  for x in jax.tree.leaves(state.params))),
      'forward_flops_per_example': forward_flops(model, state.params, cfg,
                                                 task, step_task),
      'trainable_fraction': optim.trainable_fraction(state.params,
                                                     config.trainable),
  }
  if task == 'seq2seq':  # the whole split decoded, a baseline and samples
    report = seq2seq_eval.test_report(
        model, state.params, datasets, config.test_split or config.eval_split,
        0, workdir if jax.process_index() == 0 else None)
    results['baseline'] = report.pop('baseline')
    results['test'].update(report)
    results['wall_seconds'] = time.time() - start_time
  if spec is not None:  # always the most frequent token of the inputs
    results['baseline'] = {
        'eval_masked_accuracy': eval_metrics['eval_masked_baseline_accuracy'],
        'token_id': baseline_id}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, checkpoints.RESULTS_FILE), 'w') as f:
      json.dump(results, f, indent=1)
  return state, results


def forward_flops(model, params, cfg: ModelConfig, task: str,
                  step_task: Optional[str] = None) -> float:
  """FLOPs of one example's forward pass at max_len (batches are padded to
  it), counted on the traced program (cost.jaxpr_flops)."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  inputs = steps.model_inputs(_dummy_inputs(cfg, task), step_task or task)
  return cost.jaxpr_flops(lambda p, *x: model.apply({'params': p}, *x),
                          shapes, *inputs)


def _check_finite(sums: dict[str, Any], checkpointer) -> None:
  bad_step = int(sums['first_nonfinite_step'])
  if bad_step >= 0:
    checkpointer.wait()
    raise NonFiniteLossError(
        f'training loss is NaN or Inf at step {bad_step + 1}; stopped. The '
        f'last good checkpoint (step {checkpointer.latest_step()}) in '
        f'{checkpointer.directory} is intact.')


def _better(value: float, best: float, mode: str) -> bool:
  return value > best if mode == 'max' else value < best


def _best_so_far(workdir: str, config, start_step: int):
  """The best eval record up to `start_step` from metrics.jsonl (resume)."""
  best = None
  for record in metrics_lib.read_metrics(workdir):
    value = record.get(config.best_metric)
    if value is None or record['step'] > start_step:
      continue
    if best is None or _better(value, best['value'], config.best_mode):
      best = {'step': record['step'], 'value': value,
              'metrics': {k: v for k, v in record.items()
                          if k.startswith('eval_')}}
  return best
