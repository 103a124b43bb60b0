"""The run directory: its files, and loading a finished run from it."""

import os
import shutil

import jax
import numpy as np
import pytest

import simmim_jax.data  # noqa: F401  (registers lra_listops)
from simmim_jax.training import run_dir
from simmim_jax.training import steps
from simmim_jax.training import train
from tests import train_worker


@pytest.fixture(scope='module')
def finished(tmp_path_factory, data_dir):
  """(workdir, config, final state, results) of a finished small run whose
  best checkpoint (by eval_loss 'max': the first eval) is kept besides the
  latest."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = train_worker.small_config(
      data_dir, num_steps=6, eval_every=2, checkpoint_every=2,
      keep_checkpoints=1, best_metric='eval_loss', best_mode='max')
  state, results = train.train_and_evaluate(config, workdir)
  return workdir, config, state, results


def _eval_metrics(run, datasets, split):
  """The eval step's metrics of the loaded model over `split`."""
  eval_step = jax.jit(steps.make_eval_step(run.model.apply, 'classification'))
  sums = steps.empty_metrics(train=False)
  for batch in datasets.eval_batches(split):
    sums = eval_step(run.params, batch, sums)
  return steps.summarize(jax.device_get(sums), 'classification')


def test_every_file_of_a_finished_run_is_named_by_run_dir(finished):
  workdir = finished[0]
  assert sorted(os.listdir(workdir)) == sorted([
      run_dir.CHECKPOINTS_DIR, run_dir.CONFIG_FILE, run_dir.METRICS_FILE,
      run_dir.MODEL_CONFIG_FILE, run_dir.RESULTS_FILE,
      run_dir.TENSORBOARD_DIR])
  assert run_dir.is_finished(workdir)
  assert run_dir.load_results(workdir)['step'] == 6


def test_latest_is_the_final_state_and_scores_the_results(finished):
  workdir, config, state, results = finished
  run = run_dir.load_run(workdir, 'latest')
  assert run.step == 6 and run.config.num_steps == 6
  loaded = train_worker.flat_params(run.params)
  final = train_worker.flat_params(state.params)
  assert loaded.keys() == final.keys()
  for name in final:
    np.testing.assert_array_equal(loaded[name], final[name], err_msg=name)
  datasets = simmim_jax.data.create_datasets(
      config.data, global_batch_size=8, eval_batch_size=200, seed=0)
  assert run.model.config == train.model_config(config, datasets)
  metrics = _eval_metrics(run, datasets, config.eval_split)
  assert metrics['accuracy'] == pytest.approx(
      results['final']['eval_accuracy'], abs=1e-6)
  assert metrics['loss'] == pytest.approx(results['final']['eval_loss'],
                                          rel=1e-5)


def test_best_is_the_step_the_results_rank_first(finished):
  workdir, config, _, results = finished
  best = run_dir.load_run(workdir)
  assert best.step == results['best']['step']
  assert str(best.step) in os.listdir(run_dir.checkpoints_dir(workdir))
  datasets = simmim_jax.data.create_datasets(
      config.data, global_batch_size=8, eval_batch_size=200, seed=0)
  assert _eval_metrics(best, datasets, config.eval_split)['loss'] == (
      pytest.approx(results['best']['value'], rel=1e-5))


def test_a_missing_or_unfinished_run_is_a_clear_error(finished, tmp_path):
  with pytest.raises(FileNotFoundError, match=f'{tmp_path} holds no finished '
                     'run: config.json missing; train it first'):
    run_dir.load_run(str(tmp_path))
  running = str(tmp_path / 'running')
  shutil.copytree(finished[0], running,
                  ignore=shutil.ignore_patterns(run_dir.RESULTS_FILE))
  with pytest.raises(FileNotFoundError, match='holds no finished run: '
                     "results.json missing; .*which='latest', finished=False"):
    run_dir.load_run(running)
  assert run_dir.load_run(running, 'latest', finished=False).step == 6
  shutil.rmtree(run_dir.checkpoints_dir(running))
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    run_dir.load_run(running, 'latest', finished=False)
  with pytest.raises(ValueError, match="which must be 'best' or 'latest'"):
    run_dir.load_run(finished[0], 'first')


def test_a_run_without_model_config_json_rebuilds_it_from_its_data(
    finished, tmp_path):
  older = str(tmp_path / 'older')
  shutil.copytree(finished[0], older,
                  ignore=shutil.ignore_patterns(run_dir.MODEL_CONFIG_FILE))
  assert run_dir.load_model_config(older) == run_dir.load_model_config(
      finished[0])
  assert run_dir.load_run(older).step == run_dir.load_run(finished[0]).step
