"""The training stack: outputs, resume, preemption, NaN, sharding, processes."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax.data  # noqa: F401  (registers lra_listops)
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import run_dir
from simmim_jax.training import steps
from simmim_jax.training import train
from tests import train_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_env(devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  # conftest.py's flags (its quick compiles: a worker compiles more than its
  # few steps run), with `devices` CPU devices.
  env['XLA_FLAGS'] = ' '.join(
      [flag for flag in env.get('XLA_FLAGS', '').split()
       if not flag.startswith('--xla_force_host_platform_device_count=')] +
      [f'--xla_force_host_platform_device_count={devices}'])
  env['PYTHONPATH'] = ROOT
  return env


def _start_worker(workdir, data_dir, num_steps, *extra, devices=1):
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.train_worker', str(workdir), data_dir,
       str(num_steps), *map(str, extra)],
      cwd=ROOT, env=_worker_env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=300) -> str:
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-3000:]
  return output


def _params(workdir, process=0):
  with np.load(os.path.join(workdir, f'final_params_{process}.npz')) as f:
    return dict(f)


def _assert_identical(a, b):
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_run_writes_metrics_results_and_checkpoints(tmp_path, data_dir):
  config = train_worker.small_config(data_dir, test_split='test')
  _, results = train.train_and_evaluate(config, str(tmp_path))
  records = metrics_lib.read_metrics(str(tmp_path))
  train_steps = [r['step'] for r in records if 'train_loss' in r]
  eval_steps = [r['step'] for r in records if 'eval_accuracy' in r]
  assert train_steps == [1, 2, 3, 4, 5, 6] and eval_steps == [3, 6]
  for r in records:
    if 'train_loss' in r:
      assert r['tokens_per_second'] > 0 and r['step_seconds'] > 0
  on_disk = json.load(open(tmp_path / 'results.json'))
  assert on_disk['final']['eval_accuracy'] == results['final']['eval_accuracy']
  assert set(on_disk) >= {'final', 'best', 'test', 'wall_seconds'}
  assert 0 <= on_disk['test']['test_accuracy'] <= 1
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']
  assert any(f.startswith('events') for f in os.listdir(tmp_path /
                                                         'tensorboard'))
  assert json.load(open(tmp_path / 'config.json'))['model']['d_model'] == 32


def test_keeps_the_best_checkpoint_besides_the_latest(tmp_path, data_dir):
  # Loss keeps falling, so rank by eval_loss 'max': the worst (first) eval
  # is the 'best' and must survive beside the last two.
  config = train_worker.small_config(
      data_dir, num_steps=8, eval_every=2, checkpoint_every=2,
      keep_checkpoints=2, best_metric='eval_loss', best_mode='max')
  _, results = train.train_and_evaluate(config, str(tmp_path))
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert kept[-2:] == [6, 8] and results['best']['step'] in kept
  assert len(kept) <= 3


def test_bf16_precision_trains_over_float32_parameters(tmp_path, data_dir):
  config = train_worker.small_config(data_dir, precision='bf16',
                                     first_moment_dtype='bfloat16')
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results['final']['eval_loss'])
  losses = [r['train_loss'] for r in metrics_lib.read_metrics(str(tmp_path))
            if 'train_loss' in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  run = run_dir.load_run(str(tmp_path), 'latest')
  assert run.model.config.dtype == 'bfloat16'
  assert run.model.config.param_dtype == 'float32'
  dtypes = {x.dtype for x in jax.tree.leaves(run.params)}
  assert dtypes == {np.dtype('float32')}, dtypes
  moments = [s.mu for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda s: hasattr(s, 'mu')) if hasattr(s, 'mu')]
  assert moments and {x.dtype for m in moments for x in jax.tree.leaves(m)
                      } == {jnp.dtype(jnp.bfloat16)}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  _finish(_start_worker(workdir, data_dir, 30))
  return _params(workdir)


def test_kill_9_at_random_moments_then_resume_is_bit_identical(
    tmp_path, data_dir, uninterrupted):
  rng = random.Random(0)
  killed_at = []  # steps logged when each kill landed
  while True:
    process = _start_worker(tmp_path, data_dir, 30)
    if len(killed_at) < 2:
      # Wait for training to start, then kill at a random moment of it.
      start = len(metrics_lib.read_metrics(str(tmp_path)))
      while (process.poll() is None and
             len(metrics_lib.read_metrics(str(tmp_path))) <= start):
        time.sleep(0.02)
      time.sleep(rng.uniform(0.0, 0.6))
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        records = metrics_lib.read_metrics(str(tmp_path))
        killed_at.append(records[-1]['step'] if records else 0)
        continue
    _finish(process)
    break
  assert len(killed_at) == 2, killed_at
  assert any(0 < step < 30 for step in killed_at), killed_at
  _assert_identical(_params(tmp_path), uninterrupted)
  steps_logged = [r['step'] for r in metrics_lib.read_metrics(str(tmp_path))
                  if 'train_loss' in r]
  assert steps_logged == list(range(1, 31))


def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir, uninterrupted):
  process = _start_worker(tmp_path, data_dir, 30)
  deadline = time.time() + 120
  while time.time() < deadline:
    records = metrics_lib.read_metrics(str(tmp_path))
    if any(r['step'] >= 3 for r in records):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output = _finish(process)
  assert "'preempted': True" in output
  stopped_at = int(output.split("'step': ")[-1].split('}')[0])
  assert stopped_at < 30
  assert str(stopped_at) in os.listdir(tmp_path / 'checkpoints')
  _finish(_start_worker(tmp_path, data_dir, 30))
  _assert_identical(_params(tmp_path), uninterrupted)


def test_nonfinite_loss_stops_naming_the_step(tmp_path, data_dir, monkeypatch):
  real = steps.make_train_step

  def poisoned(task, label_smoothing=0.0, masking=None):
    step_fn = real(task, label_smoothing, masking)

    def step(state, batch, metrics, key):
      # From the 5th step on, every weight is NaN: the loss follows.
      poison = jax.numpy.where(state.step >= 4, jax.numpy.nan, 1.0)
      batch = dict(batch, weight=batch['weight'] * poison)
      return step_fn(state, batch, metrics, key)
    return step

  monkeypatch.setattr(steps, 'make_train_step', poisoned)
  config = train_worker.small_config(data_dir, num_steps=10)
  with pytest.raises(FloatingPointError, match='NaN or Inf at step 5'):
    train.train_and_evaluate(config, str(tmp_path))
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert saved[-1] == 4
  # The last good checkpoint restores, with finite parameters.
  monkeypatch.setattr(steps, 'make_train_step', real)
  state, _ = train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=4), str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_resume_with_other_model_shapes_is_refused(tmp_path, data_dir):
  train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=2), str(tmp_path))
  saved_config = open(tmp_path / 'config.json').read()
  wider = train_worker.small_config(data_dir, num_steps=4,
                                    **{'model.d_model': 48})
  with pytest.raises(ValueError, match=r"d_model: 32 -> 48"):
    train.train_and_evaluate(wider, str(tmp_path))
  assert open(tmp_path / 'config.json').read() == saved_config
  assert os.listdir(tmp_path / 'checkpoints') == ['2']


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path, data_dir):
  train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=2), str(tmp_path))
  state_dir = tmp_path / 'checkpoints' / '2' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != 'commit_success.txt':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  with pytest.raises(RuntimeError, match='could not be restored'):
    train.train_and_evaluate(
        train_worker.small_config(data_dir, num_steps=4), str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['2']


def _losses(workdir):
  return [r['train_loss'] for r in metrics_lib.read_metrics(workdir)
          if 'train_loss' in r]


def test_4x2_mesh_matches_one_device(tmp_path, data_dir):
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  runs = {}
  for shape in ((1, 1), (4, 2)):
    workdir = str(tmp_path / f'{shape[0]}x{shape[1]}')
    config = train_worker.small_config(data_dir, num_steps=3, eval_every=3,
                                       **{'mesh.shape': shape})
    state, _ = train.train_and_evaluate(config, workdir)
    runs[shape] = _losses(workdir)
    if shape == (4, 2):
      kernel = state.params['encoder']['blocks']['mlp']['wi']['kernel']
      assert kernel.sharding.spec[-1] == 'model'
  assert len(runs[(1, 1)]) == 3
  np.testing.assert_allclose(runs[(4, 2)], runs[(1, 1)], rtol=1e-5, atol=1e-5)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_in_agreement(tmp_path, data_dir):
  address = f'127.0.0.1:{_free_port()}'
  workers = [_start_worker(tmp_path, data_dir, 4, address, pid, 2, devices=2)
             for pid in range(2)]
  outputs = [_finish(w) for w in workers]
  results = [o.split('RESULTS ')[-1] for o in outputs]
  assert results[0].split("'wall_seconds'")[0] == \
      results[1].split("'wall_seconds'")[0]
  _assert_identical(_params(tmp_path, 0), _params(tmp_path, 1))
  assert len(_losses(str(tmp_path))) == 4


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 0, 'batch_size must be a positive integer'),
    ('schedule', 'linear', 'schedule must be one of'),
    ('best_metric', 'train_loss', 'best_metric must be an eval metric'),
    ('model.family', 'rnn', "model: family must be one of"),
    ('model.segment_len', 128, r'model: segment_len \(128\) exceeds max_len'),
    ('model.d_model', -4, 'model: d_model must be a positive integer'),
    ('mesh.shape', (3, 1), r'mesh.shape \[3, 1\] needs 3 devices'),
    ('batch_size', 6, "batch_size 6 is not divisible by the mesh's data"),
    ('data.max_len', 0, 'data.max_len must be a positive integer'),
    ('objective', 'mlm', "objective must be 'supervised' or 'masked'"),
    ('masking.mode', 'random', 'masking.mode must be one of'),
    ('masking.ratio', 1.0, r'masking.ratio must be in \(0, 1\)'),
    ('precision', 'fp16', r"precision must be one of \['float32', 'bf16'\]"),
    ('first_moment_dtype', 'int8', "first_moment_dtype must be 'float32'"),
    ('model.param_dtype', 'bfloat16', None),
])
def test_bad_config_fails_at_start_naming_the_field(tmp_path, data_dir, field,
                                                    value, message):
  config = train_worker.small_config(data_dir,
                                     **{'mesh.shape': (4, 1), field: value})
  if message is None:  # only wrong with bf16, which keeps float32 parameters
    config.precision = 'bf16'
    message = r"precision='bf16' .* model.param_dtype \('bfloat16'\)"
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_unknown_config_field(tmp_path, data_dir):
  config = train_worker.small_config(data_dir)
  config.unlock()
  config.num_step = 3
  with pytest.raises(ValueError, match=r"unknown config field\(s\) "
                     r"\['num_step'\]"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_dataset_is_a_clear_error(tmp_path):
  config = train_worker.small_config(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='not prepared'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_save_cut_short_is_ignored_on_resume(tmp_path, data_dir):
  train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=4), str(tmp_path))
  checkpoints_dir = tmp_path / 'checkpoints'
  # What a save killed half-way leaves: an uncommitted temporary directory.
  partial = checkpoints_dir / '6.orbax-checkpoint-tmp-1700000000'
  os.makedirs(partial / 'state')
  (partial / 'state' / 'manifest.ocdbt').write_bytes(b'partial')
  state, results = train.train_and_evaluate(
      train_worker.small_config(data_dir, num_steps=6), str(tmp_path))
  assert results['step'] == 6
  assert sorted(os.listdir(checkpoints_dir)) == ['4', '6']


def test_template_attention_trains_with_its_vq_loss(tmp_path, data_dir):
  config = train_worker.small_config(
      data_dir, **{'model.attention_kind': 'templates',
                   'model.num_templates': 4})
  train.train_and_evaluate(config, str(tmp_path))
  records = [r for r in metrics_lib.read_metrics(str(tmp_path))
             if 'train_loss' in r]
  assert all(r['train_aux_loss'] > 0 for r in records)
  assert all(np.isfinite(r['train_loss']) for r in records)


def test_seq2seq_run_scores_generation_against_a_baseline(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from experiments.configs import docstrings  # pylint: disable=g-import-not-at-top
  from tests import translation_like  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'tfds')
  tfds.builder('translation_like/de_en', data_dir=data_dir
               ).download_and_prepare()
  config = docstrings.get_config('tiny')
  config.data.update(name='tfds', dataset='translation_like/de_en',
                     input_key='de', target_key='en', label_key=None,
                     data_dir=data_dir, max_len=32, target_max_len=16)
  m = config.model
  m.d_model, m.num_heads, m.num_layers, m.decoder_layers, m.mlp_dim = (
      32, 2, 1, 1, 64)
  m.segment_len, m.cross_attention = 8, 'segment_states'
  config.update(batch_size=8, eval_batch_size=8, num_steps=4, warmup_steps=1,
                log_every=2, eval_every=4, checkpoint_every=4,
                decode_examples=0, progress=False)
  config.mesh.shape = (1, 1)
  _, results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert {'eval_loss', 'eval_accuracy', 'eval_bleu', 'eval_chrf'} <= set(
      results['final'])
  test, baseline = results['test'], results['baseline']
  assert {'test_loss', 'test_accuracy', 'test_bleu', 'test_chrf'} <= set(test)
  assert baseline['target'] == 'it is zero.'
  assert baseline['train_examples_counted'] == 48
  assert 0 <= baseline['test_chrf'] <= 100 and 0 <= test['test_chrf'] <= 100
  on_disk = json.load(open(tmp_path / 'run' / 'results.json'))
  assert on_disk['baseline']['test_chrf'] == baseline['test_chrf']
  samples = open(tmp_path / 'run' / 'samples.txt', encoding='utf-8').read()
  assert samples.count('=== test example') == 20
  german, english = translation_like.pair(201)
  assert f'--- source\n{german}\n--- reference\n{english}\n' in samples
