"""train_and_evaluate: the whole training run, importable from a notebook.

Its phases (maxtext's setup_train_loop / train_loop, nanodo's layout):
  run = run_setup.setup_run(config, workdir)      # config, data, model, mesh
  state = run_setup.create_state(...)             # fresh, or the latest
                                                  # checkpoint's
  jitted = run_setup.jit_steps(run, ...)          # the compiled steps
  train_loop.train_loop(run, jitted, state, ...)  # logs, evals, saves
  finish_run(run, jitted, ...)                    # DIR/results.json

The run resumes from the latest checkpoint in DIR/checkpoints, stops
cleanly on SIGTERM after saving, and stops with an error naming the step if
the loss stops being finite. run_dir.py names the files it writes.
"""

import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from simmim_jax import cost
from simmim_jax.inference import seq2seq_eval
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.training import checkpoints
from simmim_jax.training import experiment_config
from simmim_jax.training import optim
from simmim_jax.training import run_dir
from simmim_jax.training import run_setup
from simmim_jax.training import steps
from simmim_jax.training import train_loop
from simmim_jax.training.evaluate import evaluate
from simmim_jax.training.train_loop import NonFiniteLossError  # noqa: F401

# Notebooks and tests build a run's model with train.model_config.
model_config = run_setup.model_config


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[steps.TrainState, dict[str, Any]]:
  """Trains (or resumes) the run in `workdir`.

  Returns:
    (final train state, results); results are also written to
    DIR/results.json. A run stopped by SIGTERM returns {'preempted': True,
    'step': ...} as results, after saving its checkpoint.
  """
  run = run_setup.setup_run(config, workdir)
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  checkpointer = checkpoints.Checkpointer(
      run_dir.checkpoints_dir(run.workdir), keep=config.keep_checkpoints,
      best_metric=experiment_config.best_metric(config),
      best_mode=config.best_mode)
  train_iter = iter(run.datasets.train)
  state, start_step, state_sharding = run_setup.create_state(
      run, init_key, checkpointer, train_iter)
  jitted = run_setup.jit_steps(run, state_sharding)
  outcome = train_loop.train_loop(run, jitted, state, start_step,
                                  checkpointer, train_iter, dropout_key)
  if outcome.preempted:
    return outcome.state, {'preempted': True, 'step': outcome.step}
  return outcome.state, finish_run(run, jitted, outcome)


def finish_run(run: run_setup.RunSetup, jitted: run_setup.JitSteps,
               outcome: train_loop.LoopResult) -> dict[str, Any]:
  """The results of a finished run, also written to DIR/results.json: the
  final eval (run again if a finished run was resumed), the test split,
  the best eval, costs and, where a run has one, its baseline."""
  config, params = run.config, outcome.state.params
  eval_metrics = outcome.eval_metrics or evaluate(run, jitted, params,
                                                  config.eval_split)
  test = {}
  if config.test_split:
    # seq2seq: _seq2seq_report below decodes the test split.
    test = evaluate(run, jitted, params, config.test_split, 'test',
                    generation=False)
  results = {
      'step': outcome.step,
      'final': eval_metrics,
      'best': outcome.best,
      'test': test,
      'wall_seconds': time.time() - run.start_time,
      'model_parameters': int(sum(np.prod(x.shape)
                                  for x in jax.tree.leaves(params))),
      'forward_flops_per_example': forward_flops(
          run.model, params, run.model_config, run.task, run.step_task),
      'trainable_fraction': optim.trainable_fraction(params,
                                                     config.trainable),
  }
  if run.task == 'seq2seq':
    _seq2seq_report(run, params, results)
  if run.masking_spec is not None:  # always the most frequent input token
    results['baseline'] = {
        'eval_masked_accuracy': eval_metrics['eval_masked_baseline_accuracy'],
        'token_id': run.baseline_id}
  run_dir.write_results(results, run.workdir)
  return results


def _seq2seq_report(run: run_setup.RunSetup, params: Any,
                    results: dict[str, Any]) -> None:
  """The whole split decoded, a baseline and samples, into `results`."""
  config = run.config
  report = seq2seq_eval.test_report(
      run.model, params, run.datasets, config.test_split or config.eval_split,
      0, run.workdir if jax.process_index() == 0 else None)
  results['baseline'] = report.pop('baseline')
  results['test'].update(report)
  results['wall_seconds'] = time.time() - run.start_time


def forward_flops(model, params, cfg: ModelConfig, task: str,
                  step_task: Optional[str] = None) -> float:
  """FLOPs of one example's forward pass at max_len (batches are padded to
  it), counted on the traced program (cost.jaxpr_flops)."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  inputs = steps.model_inputs(run_setup.dummy_inputs(cfg, task),
                              step_task or task)
  return cost.jaxpr_flops(lambda p, *x: model.apply({'params': p}, *x),
                          shapes, *inputs)
