"""Every experiment config variant is valid; LM and pair tasks train end to
end."""

import functools
import glob
import importlib.util
import os

import jax
import pytest
import tensorflow_datasets as tfds

from simmim_jax import build_model
from simmim_jax import data
from simmim_jax import sweep
from simmim_jax.inference import decoding
from simmim_jax.models import attention_maps
from simmim_jax.training import experiment_config
from simmim_jax.training import run_dir
from simmim_jax.training import train
from tests import imdb_like  # noqa: F401  (registers imdb_like)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'experiments', 'configs')
VARIANTS = {'listops': ('tiny', 'small', 'small_cpu', 'small_cpu_masked',
                        'lra', 'lra_cpu'),
            'byte_lm': ('tiny', 'small'), 'tfds_text': ('tiny',),
            'docstrings': ('tiny', 'small'), 'mqar': ('tiny', 'cpu', 'zoology'),
            'lra_text': ('lra', 'lra_cpu'), 'lra_image': ('lra', 'lra_cpu'),
            'lra_retrieval': ('lra', 'lra_cpu'),
            'pathfinder': ('lra', 'pathx_lra', 'lra_cpu')}


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(CONFIG_DIR, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_config_file_is_covered():
  files = {os.path.basename(p)[:-3]
           for p in glob.glob(os.path.join(CONFIG_DIR, '*.py'))}
  assert files - {'__init__'} == set(VARIANTS)


@pytest.mark.parametrize('name,variant', [
    (n, v) for n, variants in VARIANTS.items() for v in variants])
def test_variant_is_valid(name, variant):
  config = _load(name).get_config(variant)
  experiment_config.validate_config(config)
  assert config.eval_every % config.log_every == 0


def test_the_pretraining_variant_is_the_studied_recipe():
  # Its docstring reports the `long` study's points: the configs must agree.
  pretraining = sweep.load_sweep(os.path.join(
      CONFIG_DIR, os.pardir, 'sweeps', 'pretraining.py') + ':long')[0]
  point, = sweep.make_points(
      os.path.join(CONFIG_DIR, 'listops.py') + ':small_cpu', [pretraining])
  variant = _load('listops').get_config('small_cpu_masked')
  variant.progress = False  # the sweep's runs print no progress bar
  assert point.config.seed == 0 and variant.to_json() == point.config.to_json()


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    _load('listops').get_config('huge')


def _shrink(config, data_dir, **overrides):
  config.data.data_dir = data_dir
  config.model.d_model, config.model.num_heads = 32, 2
  config.model.num_layers, config.model.mlp_dim = 1, 64
  config.model.segment_len = 16
  config.data.max_len = 64
  config.batch_size = config.eval_batch_size = 8
  config.num_steps, config.warmup_steps = 4, 1
  config.log_every = config.eval_every = config.checkpoint_every = 2
  config.progress = False
  config.mesh.shape = (1, 1)
  for name, value in overrides.items():
    setattr(config.data, name, value)
  return config


def test_byte_lm_trains_and_reports_bits_per_byte(tmp_path):
  config = _shrink(_load('byte_lm').get_config('tiny'), str(tmp_path / 'tfds'))
  config.test_split = ''
  _, results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  bits = results['final']['eval_bits_per_byte']
  assert 0 < bits < 9  # a byte has 8 bits; a barely trained model ~5-8
  assert results['best']['value'] == min(
      results['best']['value'], bits)
  # experiments/generate.py's steps: the best checkpoint continues a prompt.
  run = run_dir.load_run(str(tmp_path / 'run'))
  assert run.step == results['best']['step']
  text = decoding.continue_text(run.model, run.params, 'def ',
                                max_new_tokens=6)
  assert text.startswith('def ') and text == decoding.continue_text(
      run.model, run.params, 'def ', max_new_tokens=6)
  with pytest.raises(FileNotFoundError, match='holds no finished run'):
    run_dir.load_run(str(tmp_path))


def test_mqar_trains_and_reports_query_accuracy(tmp_path):
  config = _shrink(_load('mqar').get_config('tiny'), str(tmp_path / 'tfds'),
                   builder_config='L64_kv4_v64_n64')
  config.test_split = ''
  _, results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  accuracy = results['final']['eval_query_accuracy']
  assert 0 <= accuracy <= 1 and 'eval_accuracy' not in results['final']
  assert results['best']['value'] == max(results['best']['value'], accuracy)


@pytest.fixture(scope='module')
def pairs_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('imdb_like/pairs', data_dir=path).download_and_prepare()
  return path


def test_pair_task_trains_the_dual_encoder(tmp_path, pairs_dir):
  config = _shrink(_load('tfds_text').get_config('tiny'), pairs_dir,
                   dataset='imdb_like/pairs', other_input_key='other_text')
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= results['final']['eval_accuracy'] <= 1
  assert 'head' in state.params and 'encoder' in state.params

  datasets = data.create_datasets(config.data, global_batch_size=8,
                                  eval_batch_size=8, seed=0)
  model = build_model(train.model_config(config, datasets))
  batch = next(datasets.eval_batches('test'))
  # Jitted: one compile instead of each of the model's ops on its own.
  maps = jax.jit(functools.partial(attention_maps.attention_maps, model))(
      {'params': state.params}, batch['tokens'], batch['other_tokens'],
      batch['mask'], batch['other_mask'])
  assert maps['segment'].shape == (8, 4, 2, 16, 16)
  assert maps['state'].shape == (8, 4, 4)


def test_pair_task_pretrains_on_both_inputs_and_fine_tunes(tmp_path, pairs_dir):
  config = _shrink(_load('tfds_text').get_config('tiny'), pairs_dir,
                   dataset='imdb_like/pairs', other_input_key='other_text')
  config.update(objective='masked', best_metric='eval_masked_accuracy',
                test_split='')
  config.masking.mode = 'segment'
  _, pretrained = train.train_and_evaluate(config, str(tmp_path / 'pre'))
  assert 0 <= pretrained['final']['eval_masked_accuracy'] <= 1
  assert 0 < pretrained['baseline']['eval_masked_accuracy'] <= 1
  config.update(objective='supervised', best_metric='eval_accuracy',
                init_from=str(tmp_path / 'pre'))
  state, results = train.train_and_evaluate(config, str(tmp_path / 'tuned'))
  assert 0 <= results['final']['eval_accuracy'] <= 1
  # One token more than the data's: the pretraining's mask token.
  assert state.params['encoder']['token_embedding']['embedding'].shape[0] == (
      258)
