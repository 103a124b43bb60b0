"""Distillation into templates (k-means on a trained model's queries, swap
in) and template-only fine-tuning."""

import os

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax.data  # noqa: F401  (registers lra_listops)
from simmim_jax.models import models
from simmim_jax.training import distill
from simmim_jax.training import optim
from simmim_jax.training import train
from tests import train_worker


def test_kmeans_finds_separated_clusters(rng):
  centres = rng.normal(size=(2, 3, 4)) * 10  # [heads, K, dim]
  labels = rng.integers(0, 3, size=(300, 2))
  points = centres[np.arange(2)[None], labels] + rng.normal(size=(300, 2, 4))
  got = np.asarray(distill.kmeans(jnp.asarray(points, jnp.float32), 3,
                                  jax.random.key(0), iterations=10))
  for head in range(2):
    for centre in centres[head]:
      nearest = np.min(np.linalg.norm(got[head] - centre, axis=-1))
      assert nearest < 0.5, (head, centre, got[head])
  with pytest.raises(ValueError, match='num_clusters must be in'):
    distill.kmeans(jnp.zeros((5, 1, 2)), 6, jax.random.key(0))


def test_swap_in_library_keeps_every_other_parameter():
  source = {'encoder': {'blocks': {'attention': {'query': {'kernel': 1.0}}}},
            'head': {'bias': 2.0}}
  target = {'encoder': {'blocks': {'attention': {
      'query': {'kernel': 0.0},
      'templates': {'library': np.zeros((2, 3, 4, 5), np.float32)}}}},
            'head': {'bias': 0.0}}
  library = np.ones((2, 3, 4, 5), np.float32)
  merged = distill.swap_in_library(target, source, library)
  assert merged['head']['bias'] == 2.0
  np.testing.assert_array_equal(
      merged['encoder']['blocks']['attention']['templates']['library'], 1.0)
  with pytest.raises(ValueError, match='library has shape'):
    distill.swap_in_library(target, source, np.ones((2, 3, 4, 6)))
  with pytest.raises(ValueError, match='head/bias is not in the source'):
    distill.swap_in_library(target, {'encoder': source['encoder']}, library)


def test_trainable_mask():
  params = {'head': {'wi': {'kernel': jnp.zeros((2, 2))}},
            'encoder': {'blocks': {'attention': {
                'templates': {'library': jnp.zeros((1, 2, 3, 4))},
                'query': {'kernel': jnp.zeros((1, 4, 4))}}}}}
  flat = traverse_util.flatten_dict(
      optim.trainable_mask(params, 'templates_and_head'))
  assert {'/'.join(k) for k, v in flat.items() if v} == {
      'head/wi/kernel', 'encoder/blocks/attention/templates/library'}
  assert optim.trainable_fraction(params, 'templates_and_head') == 28 / 44
  lm_params = {'lm_head': {'kernel': jnp.zeros((2, 3))},
               'encoder': {'token_embedding': {'embedding': jnp.zeros((3,))}}}
  assert optim.trainable_fraction(lm_params, 'templates_and_head') == 6 / 9


@pytest.fixture(scope='module')
def source_run(tmp_path_factory, data_dir):
  """A finished softmax run to distil from: (its workdir, its final state)."""
  source_dir = str(tmp_path_factory.mktemp('source'))
  state, _ = train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=4), source_dir)
  return source_dir, state


def test_distil_then_fine_tune_only_templates_and_head(tmp_path, data_dir,
                                                       source_run):
  source_dir, source_state = source_run
  target_dir = str(tmp_path / 'target')
  config = train_worker.small_config(
      data_dir, num_steps=3, init_from=source_dir,
      trainable='templates_and_head',
      distill_queries=500, **{'model.attention_kind': 'templates',
                              'model.num_templates': 4})
  state, results = train.train_and_evaluate(config, target_dir)
  assert 0 < results['trainable_fraction'] < 0.25
  before = traverse_util.flatten_dict(jax.device_get(source_state.params))
  after = traverse_util.flatten_dict(jax.device_get(state.params))
  changed = {'/'.join(k) for k in after
             if k not in before or not np.array_equal(after[k], before[k])}
  assert changed and all(name.startswith('head/') or name.endswith('library')
                         for name in changed), changed
  assert 'encoder/blocks/attention/templates/library' in changed


def test_initial_library_is_kmeans_of_the_source_queries(data_dir,
                                                         source_run):
  source_dir, _ = source_run
  libraries = {}
  for init in ('kmeans', 'random'):
    # What train_and_evaluate starts from, without its train step.
    config = train_worker.small_config(
        data_dir, init_from=source_dir, template_init=init,
        distill_queries=400, **{'model.attention_kind': 'templates',
                                'model.num_templates': 4})
    datasets = simmim_jax.data.create_datasets(
        config.data, global_batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size, seed=config.seed)
    model = models.build_model(train.model_config(config, datasets))
    fresh = nn.unbox(jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, 64), jnp.int32))['params'])
    params = distill.initial_params(config, model, datasets, fresh)
    libraries[init] = np.asarray(
        params['encoder']['blocks']['attention']['templates']['library'])
    if init == 'random':  # the fresh library, untouched
      np.testing.assert_array_equal(libraries[init], np.asarray(
          fresh['encoder']['blocks']['attention']['templates']['library']))
  assert libraries['kmeans'].shape == (1, 2, 4, 16)
  assert not np.allclose(libraries['kmeans'], libraries['random'])


def test_init_from_a_missing_run_is_a_clear_error(tmp_path, data_dir):
  os.makedirs(tmp_path / 'empty')
  config = train_worker.small_config(data_dir,
                                     init_from=str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='holds no finished run'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.slow  # the full study is experiments/labs/templates.py; ~40 s
def test_template_study_end_to_end(tmp_path, data_dir):
  from experiments.labs import templates as study
  config = train_worker.small_config(data_dir, num_steps=2,
                                     **{'model.family': 'transformer'})
  rows = study.run_study(config, str(tmp_path), [4], finetune_steps=2,
                         cost_length=256, repeats=1)
  assert [r['stage'] for r in rows] == ['original', 'swapped in',
                                        'templates fine-tuned']
  original, swapped, tuned = rows
  # Full attention at 256 vs 4 templates: far fewer attention FLOPs.
  assert original['attention_gflops'] / swapped['attention_gflops'] > 8
  assert swapped['trainable_fraction'] == 0 < tuned['trainable_fraction'] < 1
  table = study.markdown(rows, 256)
  assert table.count('\n') == 4 and 'templates fine-tuned' in table


def test_library_fit_measures_error_and_usage(rng):
  queries = rng.normal(size=(2, 50, 3, 4)).astype(np.float32)
  # One template per head at the mean: relative error 1, one template used
  # of two (the other is far away).
  means = queries.mean(axis=1)  # [layers, heads, d]
  library = np.stack([means, means + 1e3], axis=2)  # [layers, heads, 2, d]
  fit = distill.library_fit(queries, library)
  np.testing.assert_allclose(fit['relative_error'], 1.0, rtol=1e-5)
  assert fit['templates_used'] == 0.5
  # Every query its own template: exact.
  exact = np.swapaxes(queries, 1, 2)  # [layers, heads, 50, d]
  fit = distill.library_fit(queries, exact)
  assert fit['relative_error'] < 1e-10 and fit['templates_used'] == 1.0
