r"""Does a long process slow down? Step time and page faults over one run.

  python -m experiments.labs.long_process --workdir=runs/long_process \
      [--steps=5000]
  # with glibc's malloc defaults:
  SIMMIM_JAX_TUNE_MALLOC=0 python -m experiments.labs.long_process ...

In one process: `segment_attention` forward+backward at 8192 tokens, then a
training run of --steps steps of `listops.py:tiny` (train_and_evaluate, in
this process), then the same attention again. Single timings on a shared VM
vary by tens of percent from call to call, so "again" alternates --rounds
rounds in this process with rounds in a fresh process started at that
moment (`--attention_only`): the two are compared side by side, round by
round. Each round is the median of --repeats calls. Writes
DIR/long_process.json and prints the training's step time per logged window
and the attention rounds.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax  # pylint: disable=g-bad-import-order
import jax.numpy as jnp
import numpy as np

from experiments.benchmark import cases as cases
from experiments.configs import listops
import simmim_jax  # first: sets malloc before JAX starts (allocator.py)
from simmim_jax import allocator
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import run_dir
from simmim_jax.training import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory')
_STEPS = flags.DEFINE_integer('steps', 5000, 'training steps in the process')
_LENGTH = flags.DEFINE_integer('length', 8192, 'segment_attention length')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'timed calls per round')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'attention rounds per side')
_ATTENTION_ONLY = flags.DEFINE_bool(
    'attention_only', False, 'print one round of attention timing as JSON '
    '(the fresh-process side); no training')


def _faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def attention_calls(length: int, repeats: int) -> dict[str, float]:
  """segment_attention fwd+bwd: median ms and median minor faults per call."""
  sizes = cases.Sizes()
  q, k, v = cases.qkv(sizes, length)
  cotangent = cases.normal(3, q.shape, jnp.float32)
  step = jax.jit(cases.with_backward(
      lambda q, k, v: simmim_jax.segment_attention(q, k, v,
                                                   sizes.segment_len)))
  jax.block_until_ready(step(q, k, v, cotangent))
  seconds, faults = [], []
  for _ in range(repeats):
    start_faults, start = _faults(), time.perf_counter()
    jax.block_until_ready(step(q, k, v, cotangent))
    seconds.append(time.perf_counter() - start)
    faults.append(_faults() - start_faults)
  return {'ms': 1e3 * float(np.median(seconds)),
          'faults_per_call': float(np.median(faults)),
          'max_rss_mib': resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024}


def fresh_process_round(length: int, repeats: int) -> dict[str, float]:
  """One `attention_calls` round in a new Python process."""
  output = subprocess.run(
      [sys.executable, '-m', 'experiments.labs.long_process',
       '--attention_only', f'--length={length}', f'--repeats={repeats}'],
      capture_output=True, text=True, check=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _ATTENTION_ONLY.value:
    print(json.dumps(attention_calls(_LENGTH.value, _REPEATS.value)))
    return
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  workdir = os.path.abspath(_WORKDIR.value)
  train_dir = os.path.join(workdir, 'train')
  if run_dir.is_finished(train_dir):
    raise app.UsageError(f'{train_dir} holds a finished run: use a new '
                         'workdir')
  before = attention_calls(_LENGTH.value, _REPEATS.value)
  config = listops.get_config('tiny')
  config.num_steps = _STEPS.value
  config.log_every = 100
  config.eval_every = config.checkpoint_every = _STEPS.value
  config.test_split = ''
  config.progress = False
  train_faults = _faults()
  train.train_and_evaluate(config, train_dir)
  train_faults = _faults() - train_faults
  after, fresh = [], []
  for _ in range(_ROUNDS.value):
    after.append(attention_calls(_LENGTH.value, _REPEATS.value))
    fresh.append(fresh_process_round(_LENGTH.value, _REPEATS.value))
  windows = [(r['step'], r['step_seconds'])
             for r in metrics_lib.read_metrics(train_dir)
             if 'step_seconds' in r]
  report = {'malloc_settings': dict(allocator.applied),
            'attention_before': before, 'attention_after': after,
            'attention_fresh_process': fresh,
            'train_windows': windows,
            'train_faults_per_step': train_faults / _STEPS.value}
  with open(os.path.join(workdir, 'long_process.json'), 'w') as f:
    json.dump(report, f, indent=1)
  print(f'malloc settings: {allocator.applied or "glibc defaults"}')
  print('train step ms, median (min-max) of the logged windows in each '
        'range (the first window, with compilation, left out):')
  edges = [100, 500] + list(range(1000, _STEPS.value + 1, 1000))
  for low, high in zip(edges, edges[1:]):
    times = [1e3 * t for step, t in windows[1:] if low < step <= high]
    if times:
      print(f'  steps {low:5d}-{high:5d}: {np.median(times):7.1f} '
            f'({min(times):.1f}-{max(times):.1f})')
  print(f'train: {report["train_faults_per_step"]:.0f} minor faults per step')
  print(f'segment_attention fwd+bwd at {_LENGTH.value} before training: '
        f'{before["ms"]:.1f} ms, {before["faults_per_call"]:.0f} faults per '
        'call')
  print(f'after {_STEPS.value} steps, round by round (ms, faults per call): '
        'this process | a fresh process')
  for ours, theirs in zip(after, fresh):
    print(f'  {ours["ms"]:7.1f} {ours["faults_per_call"]:6.0f} | '
          f'{theirs["ms"]:7.1f} {theirs["faults_per_call"]:6.0f}')
  ratio = (np.median([r['ms'] for r in after])
           / np.median([r['ms'] for r in fresh]))
  print(f'median of rounds, this process / fresh process: {ratio:.2f}; '
        f'max RSS {after[-1]["max_rss_mib"]:.0f} MiB')


if __name__ == '__main__':
  app.run(main)
