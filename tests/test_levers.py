"""experiments/labs/segment_attention_levers.py at a short length: the
variants it runs compile, match segment_attention (the script checks) and
get a row."""

import os
import subprocess
import sys

import pytest

from experiments.labs import segment_attention_levers as levers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags):
  """The script's stdout; it exits non-zero if a variant is off."""
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.labs.segment_attention_levers',
       '--length=1024', '--repeats=1', *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _rows(stdout):
  return [line.split(' | ')[0].lstrip('| ') for line in stdout.splitlines()
          if line.startswith('| ')]


def test_the_script_checks_and_times_its_variants():
  """--only: the first variant and segment_attention's own, the matmul
  ceiling and the batched-dot table; the ragged table is skipped."""
  stdout = _run('--only=segment_attention', '--tail=0')
  rows = _rows(stdout)
  ran = [name for i, name in enumerate(levers.VARIANTS)
         if i == 0 or name.startswith('segment_attention')]
  assert len(ran) == 2
  for name in ran:
    assert name in rows, (name, stdout)
  assert not (set(levers.VARIANTS) - set(ran)) & set(rows)  # --only held
  assert 'matmul ceiling' in stdout
  for segment_len in (128, 256, 512, 1024):
    assert f'l={segment_len} |' in stdout


@pytest.mark.slow  # a timing study: every variant compiled and timed
def test_every_variant_is_checked_and_timed():
  stdout = _run()
  rows = _rows(stdout)
  for name in levers.VARIANTS:
    assert name in rows, (name, stdout)
  assert 'matmul ceiling' in stdout
  for segment_len in (128, 256, 512, 1024):
    assert f'l={segment_len} |' in stdout
