"""The run directory: the one owner of its file names, and of loading a run.

`train.train_and_evaluate(config, DIR)` writes:
  DIR/config.json         the experiment config (a resume compares it)
  DIR/model_config.json   the ModelConfig built, with the data's fields
  DIR/metrics.jsonl       one record per logged step (metrics.py)
  DIR/tensorboard/        the same scalars as TensorBoard events
  DIR/checkpoints/<step>  orbax checkpoints (checkpoints.py)
  DIR/results.json        final, best and test metrics, once it finishes
A sweep point's directory also holds DIR/train.log, the run's output.

  run = load_run(DIR)  # Run(model, params, config, step) of the best step
"""

import dataclasses
import json
import os
from typing import Any, NamedTuple, Optional

from flax import linen as nn
import jax
import ml_collections

from simmim_jax import checks
from simmim_jax import data
from simmim_jax.models import models
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.training import checkpoints
from simmim_jax.training import experiment_config

CONFIG_FILE = 'config.json'
MODEL_CONFIG_FILE = 'model_config.json'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
CHECKPOINTS_DIR = 'checkpoints'
RESULTS_FILE = 'results.json'  # written when a run finishes
LOG_FILE = 'train.log'


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, RESULTS_FILE))


def save_config(config: ml_collections.ConfigDict, workdir: str,
                model_config: Optional[ModelConfig] = None) -> None:
  """Writes DIR/config.json and, if given, DIR/model_config.json (on the
  main process), atomically."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  _write(os.path.join(workdir, CONFIG_FILE),
         config.to_json_best_effort(indent=1, sort_keys=True))
  if model_config is not None:
    _write(os.path.join(workdir, MODEL_CONFIG_FILE), json.dumps(
        dataclasses.asdict(model_config), indent=1, sort_keys=True))


def write_results(results: dict[str, Any], workdir: str) -> None:
  """Writes DIR/results.json (on the main process): the run is finished."""
  if jax.process_index() == 0:
    _write(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=1))


def _write(path: str, text: str) -> None:
  # Atomic: a reader (a sweep asking whether a point is done) never sees
  # half a file.
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _read(workdir: str, name: str) -> Optional[Any]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_config(workdir: str) -> Optional[dict[str, Any]]:
  """DIR/config.json as a dict; None if there is none."""
  return _read(workdir, CONFIG_FILE)


def load_results(workdir: str) -> Optional[dict[str, Any]]:
  """DIR/results.json as a dict; None while the run has not finished."""
  return _read(workdir, RESULTS_FILE)


def saved_objective(workdir: str) -> Optional[str]:
  """The objective of the run in `workdir` (None: '' or no run there)."""
  if not workdir:
    return None
  saved = load_config(workdir)
  return None if saved is None else saved.get('objective', 'supervised')


def model_config_changes(config: ml_collections.ConfigDict,
                         workdir: str) -> list[str]:
  """'field: saved -> now' for each model field that differs from the config
  saved in `workdir` (empty for a new run)."""
  saved = load_config(workdir)
  if saved is None:
    return []
  saved_model = saved.get('model', {})
  current_model = json.loads(config.to_json_best_effort())['model']
  return [f'{name}: {saved_model.get(name)!r} -> {current_model.get(name)!r}'
          for name in sorted(set(saved_model) | set(current_model))
          if saved_model.get(name) != current_model.get(name)]


class Run(NamedTuple):
  """A trained run: its model, the parameters saved at `step` (on the first
  local device) and its saved config."""
  model: nn.Module
  params: Any
  config: ml_collections.ConfigDict
  step: int


def load_run(workdir: str, which: str = 'best', *,
             finished: bool = True) -> Run:
  """The run in `workdir` at its best step or its latest.

  Args:
    workdir: a train_and_evaluate workdir.
    which: 'best' (by its best_metric; the latest if that checkpoint is not
      kept) or 'latest'.
    finished: require results.json; False also loads a run still training
      (or stopped) at its latest checkpoint.

  Raises:
    checks.MissingPathError (a FileNotFoundError) naming what is missing.
  """
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  saved = load_config(workdir)
  if saved is None:
    raise checks.MissingPathError(
        f'{workdir} holds no finished run: {CONFIG_FILE} missing; train it '
        f'first (python -m experiments.train --workdir={workdir} ...)')
  config = ml_collections.ConfigDict(saved)
  results = load_results(workdir)
  if results is None and finished:
    raise checks.MissingPathError(
        f'{workdir} holds no finished run: {RESULTS_FILE} missing; train it '
        'to the end first (the same command resumes it) or pass '
        "which='latest', finished=False to load its latest checkpoint")
  best = (results or {}).get('best') or {}
  step, params = _restore(workdir, best.get('step') if which == 'best'
                          else None)
  model = models.build_model(load_model_config(workdir))
  return Run(model, params, config, step)


def _restore(workdir: str, step: Optional[int]) -> tuple[int, Any]:
  """(step, params) of checkpoint `step` if kept, else of the latest."""
  directory = checkpoints_dir(workdir)
  if not os.path.isdir(directory):
    raise checks.MissingPathError(f'{workdir} holds no finished run: no '
                                  f'checkpoint in {directory}')
  checkpointer = checkpoints.Checkpointer(directory, keep=1)
  try:
    if step is None or not os.path.isdir(checkpointer.step_dir(step)):
      step = checkpointer.latest_step()
    if step is None:
      raise checks.MissingPathError(f'{workdir} holds no finished run: no '
                                    f'checkpoint in {directory}')
    return step, checkpointer.restore_params(step)
  finally:
    checkpointer.close()


def load_model_config(workdir: str) -> ModelConfig:
  """The ModelConfig the run in `workdir` built.

  Runs from before model_config.json was written build it again from their
  data, which must still be where their config says."""
  fields = _read(workdir, MODEL_CONFIG_FILE)
  if fields is not None:
    return ModelConfig.from_dict(fields)
  saved = load_config(workdir)
  if saved is None:
    raise checks.MissingPathError(
        f'{workdir} holds no run: {CONFIG_FILE} missing')
  config = ml_collections.ConfigDict(saved)
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  return experiment_config.model_config(
      config, datasets, init_objective=saved_objective(config.init_from))
