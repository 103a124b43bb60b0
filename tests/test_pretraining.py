"""Masked self-pretraining: the run, fine-tuning from it (the masking
functions themselves: test_masking.py)."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import listops
from simmim_jax.training import distill
from simmim_jax.training import experiment_config
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import steps
from simmim_jax.training import train
from tests import train_worker


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = train_worker.small_config(
      data_dir, objective='masked', best_metric='eval_masked_accuracy',
      num_steps=40, eval_every=20, log_every=10, checkpoint_every=20,
      learning_rate=3e-3)
  state, results = train.train_and_evaluate(config, workdir)
  return workdir, state, results


def test_masked_pretraining_beats_the_most_frequent_token(pretrained):
  workdir, _, results = pretrained
  on_disk = json.load(open(f'{workdir}/results.json'))
  final, baseline = on_disk['final'], on_disk['baseline']
  assert final['eval_masked_accuracy'] > baseline['eval_masked_accuracy'] > 0
  records = [json.loads(line) for line in open(f'{workdir}/metrics.jsonl')]
  assert all('train_masked_loss' in r for r in records if r['step'] % 10 == 0
             and 'learning_rate' in r)
  assert results['final'] == final


def test_fine_tuning_loads_the_encoder_and_starts_a_fresh_head(
    pretrained, tmp_path, data_dir):
  source_dir, source_state, _ = pretrained
  config = train_worker.small_config(data_dir, init_from=source_dir,
                                     num_steps=0, warmup_steps=0)
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert 'eval_accuracy' in results['final']
  source = train_worker.flat_params(source_state.params)
  loaded = train_worker.flat_params(state.params)
  encoder = [k for k in loaded if k.startswith("['encoder']")]
  assert encoder and all(k in source for k in encoder)
  for name in encoder:
    np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
  # The head (and pooling) are a fresh model's: the same run from scratch.
  fresh, _ = train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=0, warmup_steps=0),
      str(tmp_path / 'new'))
  fresh = train_worker.flat_params(fresh.params)
  head = [k for k in loaded if k.startswith("['head']")]
  assert head
  for name in head:
    np.testing.assert_array_equal(loaded[name], fresh[name], err_msg=name)


def test_init_from_an_unfinished_run_warns_with_its_step(pretrained, tmp_path,
                                                        caplog):
  source_dir = pretrained[0]
  running = str(tmp_path / 'running')
  shutil.copytree(source_dir, running,
                  ignore=shutil.ignore_patterns('results.json'))
  with caplog.at_level(logging.WARNING):
    distill.load_trained_params(source_dir)
    assert 'has not finished' not in caplog.text
    distill.load_trained_params(running)
  assert (f"init_from={running!r} has not finished (no results.json): "
          "loading its latest checkpoint, step 40 of num_steps=40"
          in caplog.text)


def test_masked_objective_needs_a_masked_best_metric(tmp_path, data_dir):
  # eval_loss and eval_accuracy stand for their masked counterparts; a
  # metric a masked run does not report is refused by name.
  config = train_worker.small_config(data_dir, objective='masked',
                                     best_metric='eval_bits_per_byte')
  with pytest.raises(ValueError, match='best_metric=.eval_bits_per_byte. '
                     'does not fit objective=.masked.'):
    train.train_and_evaluate(config, str(tmp_path))
  config = train_worker.small_config(data_dir,
                                     best_metric='eval_masked_accuracy')
  with pytest.raises(ValueError, match='best_metric=.eval_masked_accuracy. '
                     'does not fit objective=.supervised.'):
    train.train_and_evaluate(config, str(tmp_path))


def test_the_masked_objective_needs_no_best_metric_flag(tmp_path, data_dir):
  # python -m experiments.train --config=...listops.py:tiny
  #     --config.objective=masked
  config = listops.get_config('tiny')
  config.objective = 'masked'
  experiment_config.validate_config(config)
  assert config.best_metric == 'eval_accuracy'  # the task config's
  assert experiment_config.best_metric(config) == 'eval_masked_accuracy'
  config.best_metric = 'eval_loss'
  assert experiment_config.best_metric(config) == 'eval_masked_loss'
  # A short run ranks its evals by masked accuracy.
  config = train_worker.small_config(data_dir, objective='masked',
                                     num_steps=4, eval_every=2)
  _, results = train.train_and_evaluate(config, str(tmp_path))
  evals = [r for r in metrics_lib.read_metrics(str(tmp_path))
           if 'eval_masked_accuracy' in r]
  best = max(evals, key=lambda r: r['eval_masked_accuracy'])
  assert results['best']['step'] == best['step']
  assert results['best']['value'] == best['eval_masked_accuracy']


def test_masked_resume_equals_uninterrupted(tmp_path, data_dir):
  def run(workdir, num_steps):
    config = train_worker.small_config(
        data_dir, objective='masked', best_metric='eval_masked_loss',
        best_mode='min', num_steps=num_steps, eval_every=4,
        checkpoint_every=2, eval_batch_size=1000)
    return train_worker.flat_params(
        train.train_and_evaluate(config, str(workdir))[0].params)

  straight = run(tmp_path / 'straight', 4)
  run(tmp_path / 'resumed', 2)
  resumed = run(tmp_path / 'resumed', 4)
  assert straight.keys() == resumed.keys()
  for name in straight:
    np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)


def test_a_changed_encoder_shape_is_refused_by_name():
  fresh = {'encoder': {'token_embedding': {'embedding': np.zeros((5, 4))}},
           'head': {'kernel': np.zeros((4, 2))}}
  source = {'encoder': {'token_embedding': {'embedding': np.ones((5, 8))}}}
  with pytest.raises(ValueError, match=r'encoder/token_embedding/embedding '
                     r'has shape \(5, 8\) in the pretrained encoder'):
    distill.pretrained_encoder(fresh, source)
  with pytest.raises(ValueError, match='encoder/token_embedding/embedding is '
                     'not in the pretrained encoder'):
    distill.pretrained_encoder(fresh, {'encoder': {}})
  source['encoder']['token_embedding']['embedding'] = np.ones((5, 4))
  merged = distill.pretrained_encoder(fresh, source)
  assert merged['encoder']['token_embedding']['embedding'].sum() == 20
  assert merged['head'] is fresh['head'] or np.all(
      merged['head']['kernel'] == 0)


def _masked_config(data_dir, **overrides):
  return train_worker.small_config(
      data_dir, objective='masked', best_metric='eval_masked_loss',
      best_mode='min', **overrides)


def test_masked_training_on_a_4x2_mesh_matches_one_device(tmp_path, data_dir):
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  losses = {}
  for shape in ((1, 1), (4, 2)):
    workdir = str(tmp_path / f'{shape[0]}x{shape[1]}')
    state, _ = train.train_and_evaluate(
        _masked_config(data_dir, num_steps=3, eval_every=3,
                       **{'mesh.shape': shape}), workdir)
    losses[shape] = [json.loads(line)['train_masked_loss']
                     for line in open(f'{workdir}/metrics.jsonl')
                     if 'train_masked_loss' in line]
  assert len(losses[(1, 1)]) == 3
  np.testing.assert_allclose(losses[(4, 2)], losses[(1, 1)], rtol=1e-5,
                             atol=1e-5)
  # 16 tokens + the mask token: 17 rows do not split over 2, so they are
  # replicated; the rest is split as in supervised training.
  encoder = state.params['encoder']
  assert encoder['token_embedding']['embedding'].shape[0] == 17
  assert encoder['token_embedding']['embedding'].sharding.spec[0] is None
  assert encoder['blocks']['mlp']['wi']['kernel'].sharding.spec[-1] == 'model'


def test_masked_nonfinite_loss_stops_naming_the_step(tmp_path, data_dir,
                                                      monkeypatch):
  real = steps.make_train_step

  def poisoned(task, label_smoothing=0.0, masking_spec=None):
    step_fn = real(task, label_smoothing, masking_spec)

    def step(state, batch, metrics, key):
      # From the 3rd step on, every parameter is NaN: so is the masked loss.
      poison = jnp.where(state.step >= 2, jnp.nan, 1.0)
      state = state.replace(
          params=jax.tree.map(lambda p: p * poison, state.params))
      return step_fn(state, batch, metrics, key)
    return step

  monkeypatch.setattr(steps, 'make_train_step', poisoned)
  with pytest.raises(FloatingPointError, match='NaN or Inf at step 3'):
    train.train_and_evaluate(_masked_config(data_dir, num_steps=6),
                             str(tmp_path))
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert saved[-1] == 2
