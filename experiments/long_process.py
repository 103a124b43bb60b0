r"""Does a long process slow down? Step time and page faults over one run.

  python -m experiments.long_process --workdir=runs/long_process [--steps=5000]
  SIMMIM_JAX_TUNE_MALLOC=0 python -m experiments.long_process ...  # glibc's
                                                                   # defaults

In one process: `segment_attention` forward+backward at 8192 tokens (median
of --repeats calls, minor page faults per call), then a training run of
--steps steps of `listops.py:tiny` (train_and_evaluate, in this process),
then the same `segment_attention` calls again. Writes DIR/long_process.json
and prints the training's step time per logged window against the first,
and the attention's time and faults before and after.
"""

import json
import os
import resource
import time

from absl import app
from absl import flags
from absl import logging

import simmim_jax  # first: sets malloc before JAX starts (allocator.py)
from simmim_jax import allocator
from simmim_jax import benchmark_cases as cases
from simmim_jax import metrics as metrics_lib
from simmim_jax import train
from experiments.configs import listops

import jax  # pylint: disable=g-bad-import-order
import jax.numpy as jnp
import numpy as np

_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory')
_STEPS = flags.DEFINE_integer('steps', 5000, 'training steps in the process')
_LENGTH = flags.DEFINE_integer('length', 8192, 'segment_attention length')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'timed attention calls')
flags.mark_flags_as_required(['workdir'])


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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)
  run_dir = os.path.join(workdir, 'train')
  if os.path.exists(os.path.join(run_dir, 'results.json')):
    raise app.UsageError(f'{run_dir} holds a finished run: use a new workdir')
  before = attention_calls(_LENGTH.value, _REPEATS.value)
  config = listops.get_config('tiny')
  config.num_steps = _STEPS.value
  config.log_every = 100
  config.eval_every = config.checkpoint_every = _STEPS.value
  config.test_split = ''
  config.progress = False
  train_faults = _faults()
  train.train_and_evaluate(config, run_dir)
  train_faults = _faults() - train_faults
  after = attention_calls(_LENGTH.value, _REPEATS.value)
  windows = [(r['step'], r['step_seconds'])
             for r in metrics_lib.read_metrics(run_dir) if 'step_seconds' in r]
  report = {'malloc_settings': dict(allocator.applied),
            'attention_before': before, 'attention_after': after,
            'train_windows': windows,
            'train_faults_per_step': train_faults / _STEPS.value}
  with open(os.path.join(workdir, 'long_process.json'), 'w') as f:
    json.dump(report, f, indent=1)
  print(f'malloc settings: {allocator.applied or "glibc defaults"}')
  reference = windows[1][1] if len(windows) > 1 else windows[0][1]
  print('train step ms by window (the first includes compilation):')
  for step, seconds in windows:
    if step in (100, 200, 500) or step % 1000 == 0:
      print(f'  step {step:5d}: {1e3 * seconds:7.2f} ms '
            f'({seconds / reference:.2f}x step 200)')
  print(f'train: {report["train_faults_per_step"]:.0f} minor faults per step')
  for name, row in (('fresh', before), (f'after {_STEPS.value} steps', after)):
    print(f'segment_attention fwd+bwd at {_LENGTH.value}, {name}: '
          f'{row["ms"]:.1f} ms, {row["faults_per_call"]:.0f} faults per call, '
          f'max RSS {row["max_rss_mib"]:.0f} MiB')


if __name__ == '__main__':
  app.run(main)
