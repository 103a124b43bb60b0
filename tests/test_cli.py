"""A user's mistake reads as one line and exit status 2 (experiments/cli.py).

Each entry point runs in a subprocess that fails before any training: the
mistakes all start at once (one module fixture), so the imports overlap.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import cli
from simmim_jax import checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTOPS = 'experiments/configs/listops.py'

# name: (module, flags, words stderr's line must hold); {tmp} is a temp dir.
MISTAKES = {
    'sweep key': (
        'experiments.sweep',
        [f'--config={LISTOPS}:tiny', '--sweep={tmp}/sweep.py',
         '--workdir={tmp}/sweep', '--dry_run'],
        ['sweep point 1', 'model.segment_lenght=8', "'segment_lenght'",
         "did you mean 'segment_len'"]),
    'config field': (
        'experiments.train',
        [f'--config={LISTOPS}:tiny', '--config.model.segment_lenght=8',
         '--workdir={tmp}/run'],
        ['--config.model.segment_lenght=8', "did you mean 'segment_len'"]),
    'config value': (
        'experiments.train',
        [f'--config={LISTOPS}:tiny', '--config.model.segment_len=0',
         '--workdir={tmp}/run'],
        ['segment_len must be a positive integer', 'got 0']),
    'config variant': (
        'experiments.train',
        [f'--config={LISTOPS}:nosuchvariant', '--workdir={tmp}/run'],
        [f'--config={LISTOPS}:nosuchvariant', "unknown variant "
         "'nosuchvariant'", "'tiny'"]),
    'generate workdir': (
        'experiments.generate', ['--workdir={tmp}/no_run'],
        ['{tmp}/no_run', 'holds no']),
}

_SWEEP_FILE = """
def get_sweep(variant=None):
  return [{'model.segment_len': 8, 'seed': 0},
          {'model.segment_lenght': 8, 'seed': 1}]
"""


@pytest.fixture(scope='module')
def failures(tmp_path_factory):
  """name: (exit status, stderr) of every mistake, run side by side."""
  tmp = str(tmp_path_factory.mktemp('cli'))
  with open(os.path.join(tmp, 'sweep.py'), 'w') as f:
    f.write(_SWEEP_FILE)
  processes = {
      name: subprocess.Popen(
          [sys.executable, '-m', module,
           *(arg.format(tmp=tmp) for arg in flags)],
          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, (module, flags, _) in MISTAKES.items()}
  results = {}
  for name, process in processes.items():
    _, stderr = process.communicate(timeout=300)
    results[name] = process.returncode, stderr
  return tmp, results


@pytest.mark.parametrize('name', list(MISTAKES))
def test_a_mistake_is_one_line_and_status_2(failures, name):
  tmp, results = failures
  status, stderr = results[name]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert status == cli.USAGE_STATUS, stderr
  assert 'Traceback' not in stderr, stderr
  assert len(lines) == 1, stderr
  assert lines[0].startswith('error: '), stderr
  for words in MISTAKES[name][2]:
    assert words.format(tmp=tmp) in lines[0], (words, stderr)


def test_describe_reads_ml_collections_lookup_errors():
  # What ml_collections raises for a misspelled --config. field.
  try:
    try:
      raise KeyError('segment_lenght')
    except KeyError:
      raise KeyError('\'segment_lenght\'\nDid you mean "segment_len" '
                     'instead of "segment_lenght"?')
  except KeyError as error:
    assert checks.describe(error) == (
        "no config field 'segment_lenght'; did you mean 'segment_len'?")
  assert checks.describe(ValueError('two\n  lines')) == 'two lines'


def test_user_errors_become_config_errors():
  with pytest.raises(checks.ConfigError, match='no such file'):
    with cli.user_errors():
      open('/no/such/file.json')
  with pytest.raises(ZeroDivisionError):  # not the user's: left alone
    with cli.user_errors():
      _ = 1 / 0
  assert cli.int_list(['1024', '4096'], '--lengths') == (1024, 4096)
  with pytest.raises(checks.ConfigError, match='--lengths must be positive'):
    cli.int_list(['1024', 'x'], '--lengths')


def test_number_and_integer_messages_name_the_field():
  with pytest.raises(checks.ConfigError, match=r'rate must be > 0, got 0'):
    checks.number(0, 'rate', low_open=True)
  with pytest.raises(checks.ConfigError, match=r'p must be in \(0, 1\]'):
    checks.number(2.0, 'p', high=1, low_open=True, high_open=False)
  with pytest.raises(ValueError, match='n must be an integer >= 2, got True'):
    checks.integer(True, 'n', minimum=2)
  assert checks.integer(np.int64(3), 'n') == 3


def test_the_compilation_cache_is_on_where_the_config_says(tmp_path,
                                                           monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  try:
    # The test run's own cache ($JAX_COMPILATION_CACHE_DIR) wins.
    assert cli.enable_compilation_cache(str(tmp_path)) == before
    monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
    assert cli.enable_compilation_cache('') == ''
    assert jax.config.jax_compilation_cache_dir == before
    assert cli.enable_compilation_cache(str(tmp_path)) == str(tmp_path)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
