"""The sweep runner: points, names, validation, resume after kills, summary."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from simmim_jax import sweep
from simmim_jax.sweep import summary as sweep_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'experiments/configs/listops.py:tiny'


def test_helpers_build_points():
  assert sweep.product({'a': [1, 2], 'b': ['x']}) == [
      {'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
  assert sweep.zipped({'a': [1, 2], 'b': [3, 4]}) == [
      {'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ValueError, match='different lengths'):
    sweep.zipped({'a': [1, 2], 'b': [3]})
  # Seed-major: every point's seed 0 before any seed 1.
  assert sweep.with_seeds([{'a': 1}, {'a': 2}], 2) == [
      {'a': 1, 'seed': 0}, {'a': 2, 'seed': 0},
      {'a': 1, 'seed': 1}, {'a': 2, 'seed': 1}]


def test_point_names_are_readable_stable_and_short():
  name = sweep.point_name({'seed': 1, 'model.family': 'local'})
  assert name == 'family=local-seed=1'
  assert sweep.point_name({'model.family': 'local', 'seed': 1}) == name
  long = {f'model.field_{i}': 'x' * 20 for i in range(5)}
  assert len(sweep.point_name(long)) <= 80
  assert sweep.point_name(long) != sweep.point_name({**long, 'seed': 0})
  assert sweep.point_name({}).startswith('base-')
  # Too long: the objective's fields go first; family and seed stay.
  masked = {'objective': 'masked', 'best_metric': 'eval_masked_accuracy',
            'masking.mode': 'span', 'masking.ratio': 0.3,
            'model.family': 'transformer', 'num_steps': 750, 'seed': 2}
  name = sweep.point_name(masked)
  assert len(name) <= 80 and name.startswith(
      'mode=span-ratio=0.3-family=transformer-num_steps=750-seed=2-')
  tuned, = sweep.fine_tune([masked], learning_rate=3e-4)
  assert tuned == {'model.family': 'transformer', 'seed': 2,
                   'learning_rate': 3e-4, 'init_from': '@' + name}
  assert sweep.point_name(tuned).startswith(
      'init_from=mode=span-ratio=0.3-family=transformer-num_steps=750-')


@pytest.mark.parametrize('point, message', [
    ({'model.famly': 'local'}, r"point 0 .*famly.*family"),
    ({'num_steps': 'many'}, r"point 0 .*config.num_steps=many"),
    ({'model.family': 'rnn'}, r"point 0 .*family must be one of"),
    ({'model.segment_len': 0}, r"point 0 .*segment_len"),
    ({'seed': 1.5}, r"point 0 .*seed"),
    ({'model.state_key_dim': None}, r"point 0 .*state_key_dim"),
    ({'init_from': '@seed=0'}, r"point 0 .*names no earlier point"),
])
def test_bad_points_fail_before_anything_runs(point, message):
  with pytest.raises(ValueError, match=message):
    sweep.make_points(TINY, [point])


def test_points_and_flags_must_not_collide():
  with pytest.raises(ValueError, match='same directory name'):
    sweep.make_points(TINY, [{'seed': 1}, {'seed': 1}])
  with pytest.raises(ValueError, match=r"\['seed'\] set both"):
    sweep.make_points(TINY, [{'seed': 1}], [('seed', '2')])


def test_printed_commands_build_the_points_configs():
  points = sweep.make_points(
      TINY, [{'model.family': 'local', 'learning_rate': 3e-4,
              'mesh.shape': (2, 1), 'model.exclude_self': False}],
      [('num_steps', '700')])
  command = shlex.split(sweep.dry_run_commands(points, 'runs/x')[0])
  assert command[:3] == ['python', '-m', 'experiments.train']
  flags = [a for a in command[3:] if a.startswith('--config.')]
  assert command[3] == f'--config={TINY}'
  rebuilt = sweep.resolve_config(
      TINY, [tuple(f[len('--config.'):].split('=', 1)) for f in flags])
  assert rebuilt.to_json() == points[0].config.to_json()
  assert rebuilt.learning_rate == 3e-4 and rebuilt.num_steps == 700
  assert rebuilt.mesh.shape == (2, 1) and not rebuilt.model.exclude_self


def test_a_directory_of_another_config_is_refused(tmp_path):
  point, = sweep.make_points(TINY, [{'seed': 3}])
  directory = tmp_path / point.name
  directory.mkdir()
  other, = sweep.make_points(TINY, [{'seed': 3}], [('num_steps', '900')])
  (directory / 'config.json').write_text(other.config.to_json())
  with pytest.raises(ValueError, match=r'seed=3 .*num_steps: saved 900'):
    sweep.run_sweep([point], str(tmp_path))
  assert sorted(os.listdir(directory)) == ['config.json']  # untouched


def test_a_run_saved_by_older_code_is_the_same_config(tmp_path):
  point, = sweep.make_points(TINY, [{'seed': 3}])
  saved = json.loads(point.config.to_json())
  saved['model']['remat'] = False  # before remat policies had names
  saved['compilation_cache_dir'] = '/elsewhere'  # changes nothing computed
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert sweep.config_mismatch(point, str(tmp_path)) == []
  saved['model']['remat'] = True
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert sweep.config_mismatch(point, str(tmp_path)) == [
      "model.remat: saved 'full', point 'none'"]


def test_a_fine_tuning_point_copied_from_another_sweep_is_its_own(tmp_path):
  masked = {'objective': 'masked', 'best_metric': 'eval_masked_accuracy',
            'seed': 3}
  _, tuned = sweep.make_points(TINY, [masked, *sweep.fine_tune([masked])])
  directory = tmp_path / tuned.name
  directory.mkdir()
  saved = tuned.config.copy_and_resolve_references()
  # As it ran in another sweep directory, from that sweep's pretraining.
  saved.init_from = os.path.join('/elsewhere/sweep', tuned.needs)
  (directory / 'config.json').write_text(saved.to_json())
  assert sweep.config_mismatch(tuned, str(directory)) == []
  saved.init_from = '/elsewhere/sweep/seed=4'  # another pretraining
  (directory / 'config.json').write_text(saved.to_json())
  assert sweep.config_mismatch(tuned, str(directory)) == [
      f"init_from: saved 'seed=4', point {tuned.needs!r}"]


def test_target_parsing():
  assert sweep_summary.parse_target('eval_accuracy:0.4') == (
      'eval_accuracy', 0.4)
  for bad in ('accuracy:0.4', 'eval_accuracy', 'eval_accuracy:x'):
    with pytest.raises(ValueError, match='target'):
      sweep_summary.parse_target(bad)


def test_group_rows_merges_seeds_per_variant():
  keys = ['model.family', 'objective', 'seed']
  rows = [{'model.family': family, 'objective': None, 'seed': seed,
           'status': status, 'best_value': value}
          for family, seed, status, value in (
              ('simmim', 0, 'done', 0.5), ('local', 0, 'done', 0.25),
              ('simmim', 1, 'done', 0.75), ('local', 1, 'failed', None),
              ('simmim', 2, 'done', 1.0))]
  rows.append({'model.family': None, 'objective': 'masked', 'seed': 0,
               'status': 'failed'})
  groups = sweep_summary.group_rows(rows, keys)
  assert [(g['model.family'], g['objective'], g['seeds'], g['points'])
          for g in groups] == [('simmim', None, 3, 3), ('local', None, 1, 2),
                               (None, 'masked', 0, 1)]
  simmim, local, masked = groups
  assert simmim['best_value_mean'] == 0.75 and simmim['best_value_n'] == 3
  assert simmim['best_value_std'] == pytest.approx(0.25)  # ddof=1
  assert local['best_value_mean'] == 0.25 and local['best_value_std'] is None
  assert 'best_value_mean' not in masked
  table = sweep_summary.grouped_table(groups, keys).splitlines()
  assert table[0] == '| seeds | model.family | objective | best_value |'
  assert table[2:] == ['| 3/3 | simmim | - | 0.75 +- 0.25 |',
                       '| 1/2 | local | - | 0.25 |', '| 0/1 | - | masked | - |']


def test_families_sweep_takes_seeds_and_families():
  path = os.path.join(os.path.dirname(__file__), os.pardir, 'experiments',
                      'sweeps', 'families.py')
  assert sweep.load_sweep(path + ':2,simmim,local') == [
      {'model.family': 'simmim', 'seed': 0},
      {'model.family': 'local', 'seed': 0},
      {'model.family': 'simmim', 'seed': 1},
      {'model.family': 'local', 'seed': 1}]
  assert [p['model.family'] for p in sweep.load_sweep(path)] == [
      'simmim', 'local', 'transformer'] * 3
  for bad in ('0', 'two', '2,simmim,simmim', '2,mamba'):
    with pytest.raises(ValueError, match='variant'):
      sweep.load_sweep(f'{path}:{bad}')


def test_listops_long_sweep_puts_the_transformer_first_or_leaves_it_out():
  path = os.path.join(os.path.dirname(__file__), os.pardir, 'experiments',
                      'sweeps', 'listops_long.py')
  simmim = [{'model.family': 'simmim', 'seed': s} for s in (0, 1)]
  assert sweep.load_sweep(path + ':0') == simmim
  assert sweep.load_sweep(path + ':2') == (
      [{'model.family': 'transformer', 'seed': 0}] + simmim +
      [{'model.family': 'transformer', 'seed': 1}])
  with pytest.raises(ValueError, match='variant'):
    sweep.load_sweep(f'{path}:one')


# --- A real sweep, interrupted twice ----------------------------------------

_SWEEP_FILE = '''
from simmim_jax import sweep

def get_sweep(variant=''):
  # One family, two seeds: every program compiles once (the runs share the
  # compile cache); test_group_rows_merges_seeds_per_variant groups several.
  points = sweep.with_seeds(sweep.product({'model.family': ['simmim']}), 2)
  # Not prepared in the test data dir (and prepare=False): this one fails.
  broken = {'data.builder_config': 'small', 'seed': 0}
  masked = {'objective': 'masked', 'best_metric': 'eval_masked_loss',
            'best_mode': 'min', 'seed': 0}
  # Fine-tuned from the masked run once it is done; from the broken one never.
  return points + [broken, masked] + sweep.fine_tune([masked, broken])
'''


def _sweep_command(sweep_file, workdir, data_dir):
  return [sys.executable, '-m', 'experiments.sweep', f'--config={TINY}',
          f'--sweep={sweep_file}', f'--workdir={workdir}', '--parallel=2',
          '--target=eval_accuracy:0.1',
          f'--config.data.data_dir={data_dir}', '--config.data.prepare=False',
          '--config.data.max_len=64', '--config.model.d_model=32',
          '--config.model.num_heads=2', '--config.model.num_layers=1',
          '--config.model.mlp_dim=64', '--config.batch_size=8',
          '--config.eval_batch_size=200', '--config.num_steps=8',
          '--config.warmup_steps=1', '--config.log_every=2',
          '--config.eval_every=4', '--config.checkpoint_every=4',
          '--config.data.eval_splits=("validation",)', '--config.test_split=',
          # One device per point (not data parallel over the 8 fake ones).
          '--config.mesh.shape=(1,1)']


def _wait_for(predicate, process, timeout=240):
  start = time.time()
  while not predicate():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.time() - start < timeout
    time.sleep(0.1)


def _done(workdir):
  return sorted(p for p in os.listdir(workdir)
                if os.path.exists(os.path.join(workdir, p, 'results.json')))


@pytest.fixture(scope='module')
def killed_sweep(tmp_path_factory, data_dir):
  """Runs the sweep, SIGTERMs it, SIGKILLs it, then lets it finish."""
  sweep_file = tmp_path_factory.mktemp('elsewhere') / 'my_sweep.py'
  sweep_file.write_text(_SWEEP_FILE)
  workdir = str(tmp_path_factory.mktemp('sweep'))
  command = _sweep_command(sweep_file, workdir, data_dir)
  env = {**os.environ, 'PYTHONPATH': ROOT}
  runs = []

  def start():
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

  # 1: SIGTERM once points train: they checkpoint, the sweep exits 143.
  process = start()
  _wait_for(lambda: any(os.path.exists(os.path.join(workdir, p,
                                                    'metrics.jsonl'))
                        for p in os.listdir(workdir)), process)
  process.send_signal(signal.SIGTERM)
  runs.append((process.communicate(timeout=120)[0], process.returncode))
  # 2: SIGKILL mid-way; its points die with it.
  process = start()
  before = len(_done(workdir))
  _wait_for(lambda: len(_done(workdir)) > before, process)
  finished = {name: os.path.getmtime(os.path.join(workdir, name,
                                                  'results.json'))
              for name in _done(workdir)}
  process.kill()
  process.wait()
  runs.append(('', process.returncode))
  time.sleep(1.0)
  # 3: to the end.
  process = start()
  runs.append((process.communicate(timeout=300)[0], process.returncode))
  return {'workdir': workdir, 'runs': runs, 'finished_before_kill': finished,
          'command': command}


def test_sigterm_stops_the_sweep_cleanly(killed_sweep):
  output, returncode = killed_sweep['runs'][0]
  assert returncode == 143, output[-3000:]
  assert 'stopping after the running points checkpoint' in output


def test_rerun_after_sigkill_finishes_without_retraining(killed_sweep):
  workdir = killed_sweep['workdir']
  output, returncode = killed_sweep['runs'][2]
  assert returncode == 2, output[-3000:]  # the failing point, its fine-tuning
  assert '4 done, 2 failed' in output
  for name, mtime in killed_sweep['finished_before_kill'].items():
    assert os.path.getmtime(os.path.join(workdir, name,
                                         'results.json')) == mtime, name
  # No point process outlived the killed sweep (each run's log shows one
  # start of every point the last run did not skip).
  for name in os.listdir(workdir):
    metrics = os.path.join(workdir, name, 'metrics.jsonl')
    if os.path.exists(metrics):
      steps = [json.loads(l)['step'] for l in open(metrics)
               if 'step_seconds' in l]  # the training records, any objective
      assert steps == [2, 4, 6, 8], (name, steps)


def test_summary_rows_and_seed_groups(killed_sweep):
  workdir = killed_sweep['workdir']
  rows = sweep_summary.load_summary(workdir)
  assert len(rows) == 6
  good = [r for r in rows if r['status'] == 'done']
  assert len(good) == 4
  for row in good:
    if row.get('objective') == 'masked':
      continue
    assert 0 <= row['final_eval_accuracy'] <= 1
    assert row['steps'] == 8 and row['parameters'] > 0
    assert row['forward_gflops'] > 0 and row['tokens_per_second'] > 0
    assert row['steps_to_target'] in (4, 8, None)
  failed, after_failed = [r for r in rows if r['status'] == 'failed']
  assert failed['data.builder_config'] == 'small'
  # A missing dataset is the user's mistake: train's one line, status 2.
  assert failed['error'].startswith('error: dataset lra_listops/small ')
  assert 'not prepared' in failed['error']
  with open(os.path.join(workdir, failed['name'], 'sweep_status.json')) as f:
    assert json.load(f)['returncode'] == 2
  assert after_failed['init_from'] == '@builder_config=small'
  assert f"init_from point {failed['name']} has not finished" in (
      after_failed['error'])
  grouped = open(os.path.join(workdir, 'summary_grouped.md')).read()
  lines = [l for l in grouped.splitlines() if l.startswith('| 2/2 |')]
  assert len(lines) == 1 and all('+-' in l for l in lines), grouped
  assert '| 0/1 |' in grouped
  header = open(os.path.join(workdir, 'summary.csv')).readline()
  assert header.startswith('name,model.family,data.builder_config,objective,'
                           'best_metric,best_mode,init_from,seed,status')
  for plot in ('summary_best_value.png', 'curves.png'):
    assert os.path.getsize(os.path.join(workdir, plot)) > 1000


def test_fine_tuning_points_start_from_their_pretraining_run(killed_sweep):
  workdir = killed_sweep['workdir']
  rows = {r['name']: r for r in sweep_summary.load_summary(workdir)}
  tuned, = [r for r in rows.values() if r['status'] == 'done'
            and r.get('init_from')]
  source = sweep.point_name({'objective': 'masked',
                             'best_metric': 'eval_masked_loss',
                             'best_mode': 'min', 'seed': 0})
  assert tuned['init_from'] == '@' + source.rsplit('-seed=', 1)[0]
  assert rows[source]['status'] == 'done'
  assert 0 <= tuned['final_eval_accuracy'] <= 1
  assert tuned['pretrain_steps'] == 8 and tuned['pretrain_train_seconds'] > 0
  config = json.load(open(os.path.join(workdir, tuned['name'],
                                       'config.json')))
  assert config['init_from'] == os.path.join(workdir, source)
  assert config['objective'] == 'supervised'
  # It started after its source had finished.
  assert os.path.getmtime(os.path.join(workdir, source, 'results.json')) <= (
      os.path.getmtime(os.path.join(workdir, tuned['name'], 'config.json')))


def test_summarize_only_rebuilds_the_same_rows(killed_sweep):
  workdir = killed_sweep['workdir']
  before = json.load(open(os.path.join(workdir, 'summary.json')))
  os.remove(os.path.join(workdir, 'summary.json'))
  output = subprocess.run(
      [*killed_sweep['command'], '--summarize_only'], cwd=ROOT,
      capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': ROOT},
      check=True).stdout
  assert '4 done, 2 failed' in output
  assert json.load(open(os.path.join(workdir, 'summary.json'))) == before


def test_ablations_notebook_runs_on_the_sweep(killed_sweep, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  monkeypatch.setenv('SIMMIM_SWEEP_DIR', killed_sweep['workdir'])
  path = os.path.join(ROOT, 'notebooks', 'ablations.ipynb')
  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {
                              'path': os.path.dirname(path)}}).execute()
  outputs = [o for cell in notebook.cells for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'family=simmim' in text or 'simmim' in text
  assert any('image/png' in o.get('data', {}) for o in outputs)

