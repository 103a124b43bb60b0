"""experiments/labs/segment_attention_levers.py at a short length: every variant
compiles, matches segment_attention (the script checks) and gets a row."""

import os
import subprocess
import sys

from experiments.labs import segment_attention_levers as levers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_variant_is_checked_and_timed():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.labs.segment_attention_levers',
       '--length=1024', '--repeats=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split(' | ')[0].lstrip('| ') for line in
          result.stdout.splitlines() if line.startswith('| ')]
  for name in levers.VARIANTS:
    assert name in rows, (name, result.stdout)
  assert 'matmul ceiling' in result.stdout
  for segment_len in (128, 256, 512, 1024):
    assert f'l={segment_len} |' in result.stdout
