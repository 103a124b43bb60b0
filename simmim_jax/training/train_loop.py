"""The training loop: steps, logging, evaluation, the best step, checkpoints.

It stops cleanly on SIGTERM after saving, and with an error naming the step
if the loss stops being finite. On resume, the best eval so far is read
back from DIR/metrics.jsonl.
"""

import dataclasses
import logging
import signal
import time
from typing import Any, NamedTuple, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
import optax

from simmim_jax.training import checkpoints
from simmim_jax.training import experiment_config
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import optim
from simmim_jax.training import sharding
from simmim_jax.training import steps
from simmim_jax.training.evaluate import evaluate
from simmim_jax.training.run_setup import JitSteps
from simmim_jax.training.run_setup import RunSetup


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


class LoopResult(NamedTuple):
  """Where the loop stopped; preempted runs carry no metrics."""
  state: steps.TrainState
  step: int
  eval_metrics: dict[str, float]  # of the last eval ({}: none ran)
  best: Optional[dict[str, Any]]  # {'step', 'value', 'metrics'}
  preempted: bool


@dataclasses.dataclass
class _Loop:
  """What the loop carries from one step to the next."""
  run: RunSetup
  jitted: JitSteps
  checkpointer: checkpoints.Checkpointer
  logger: metrics_lib.MetricLogger
  schedule: optax.Schedule
  state: steps.TrainState
  step: int
  best: Optional[dict[str, Any]]
  eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  accumulated: Any = None  # train metric sums since the last log
  window_start: float = 0.0  # time.perf_counter() at the last log

  def reset_window(self) -> None:
    self.accumulated = jax.device_put(steps.empty_metrics(),
                                      self.jitted.replicated)
    self.window_start = time.perf_counter()


def train_loop(run: RunSetup, jitted: JitSteps, state: steps.TrainState,
               start_step: int, checkpointer: checkpoints.Checkpointer,
               train_iter: Any, dropout_key: jax.Array) -> LoopResult:
  """Trains from `start_step` to config.num_steps; closes `checkpointer`."""
  config = run.config
  schedule = optim.learning_rate_schedule(config)
  logger = metrics_lib.MetricLogger(run.workdir, total_steps=config.num_steps,
                                    start_step=start_step,
                                    progress=config.progress)
  preemption = _Preemption()
  loop = _Loop(run, jitted, checkpointer, logger, schedule, state,
               start_step, best_so_far(run.workdir, config, start_step))
  loop.reset_window()
  try:
    while loop.step < config.num_steps:
      batch = sharding.global_batch(next(train_iter), run.mesh)
      loop.state, loop.accumulated = jitted.train(
          loop.state, batch, loop.accumulated, dropout_key)
      loop.step += 1
      if _after_step(loop, preemption, train_iter):
        return LoopResult(loop.state, loop.step, {}, None, preempted=True)
  finally:
    preemption.restore()
    checkpointer.wait()
    checkpointer.close()
    logger.close()
  return LoopResult(loop.state, loop.step, loop.eval_metrics, loop.best,
                    preempted=False)


def _after_step(loop: _Loop, preemption: '_Preemption', train_iter) -> bool:
  """Logs, evaluates and saves as the step asks; True when a SIGTERM
  stopped the run (its checkpoint saved)."""
  config, step = loop.run.config, loop.step
  is_last = step == config.num_steps
  log_now = step % config.log_every == 0
  evaluate_now = step % config.eval_every == 0 or is_last
  save_now = step % config.checkpoint_every == 0 or evaluate_now
  # Several processes agree on stopping only at a log step (a collective).
  preempted = preemption.any_process() if (
      jax.process_count() == 1 or log_now) else False
  if log_now or save_now or preempted:
    _check_and_log(loop, write=log_now or is_last)
  if evaluate_now:
    _evaluate_and_rank(loop)
  if save_now or preempted:
    loop.checkpointer.save(step, loop.state, _IteratorSnapshot(train_iter),
                           loop.eval_metrics if evaluate_now else None)
  if preempted and not is_last:
    loop.checkpointer.wait()
    logging.warning('preempted: saved step %d in %s', step,
                    loop.checkpointer.directory)
    return True
  return False


def _check_and_log(loop: _Loop, write: bool) -> None:
  """Raises if the loss stopped being finite; `write`: logs the window's
  train metrics and starts a new window."""
  sums = jax.device_get(loop.accumulated)
  _check_finite(sums, loop.checkpointer)
  if not write:
    return
  seconds = time.perf_counter() - loop.window_start
  train_metrics = {f'train_{k}': v for k, v in
                   steps.summarize(sums, loop.run.step_task).items()}
  train_metrics.update(
      learning_rate=float(loop.schedule(loop.step - 1)),
      step_seconds=seconds / max(float(sums['steps']), 1.0),
      tokens_per_second=float(sums['tokens']) / seconds)
  loop.logger.write(loop.step, train_metrics)
  prefix = steps.METRIC_PREFIX.get(loop.run.step_task, '')
  loop.logger.show_progress(loop.step,
                            {'loss': train_metrics[f'train_{prefix}loss']})
  loop.reset_window()


def _evaluate_and_rank(loop: _Loop) -> None:
  config = loop.run.config
  loop.eval_metrics = evaluate(loop.run, loop.jitted, loop.state.params,
                               config.eval_split)
  loop.logger.write(loop.step, loop.eval_metrics)
  value = loop.eval_metrics[experiment_config.best_metric(config)]
  if loop.best is None or _better(value, loop.best['value'],
                                  config.best_mode):
    loop.best = {'step': loop.step, 'value': value,
                 'metrics': loop.eval_metrics}


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


def best_so_far(workdir: str, config, start_step: int
                ) -> Optional[dict[str, Any]]:
  """The best eval record up to `start_step` from metrics.jsonl (resume)."""
  metric = experiment_config.best_metric(config)
  best = None
  for record in metrics_lib.read_metrics(workdir):
    value = record.get(metric)
    if value is None or record['step'] > start_step:
      continue
    if best is None or _better(value, best['value'], config.best_mode):
      best = {'step': record['step'], 'value': value,
              'metrics': {k: v for k, v in record.items()
                          if k.startswith('eval_')}}
  return best


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
