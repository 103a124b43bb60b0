r"""Runs the benchmark suite (suite.py here) and prints its tables.

  python -m experiments.benchmark --out_dir=runs/benchmark \
      [--quick | --device] [--lengths=1024,4096] [--repeats=5] \
      [--dtype=bfloat16] [--segment_len=512] \
      [--remat=none|full|projections] [--groups=op,layer,train_step,decode] \
      [--compile_depths=2,6,12]

Writes benchmark.json, benchmark.md, time_vs_length.png,
memory_vs_length.png and (with decoding cases) cache_vs_length.png into
--out_dir and prints the markdown. --quick: tiny
sizes, lengths 256 and 512, about a minute on 2 cores (mostly compilation).
--device: for a GPU or TPU, bf16 segment attention forward+backward with
PyTorch's scaled_dot_product_attention on the same segments, and the simmim
and transformer train steps, at 8k and 32k tokens (segment_len 128; run it
again with --segment_len=512), each row with the share of the measured
memory bandwidth and the train steps' MFU. The other flags override any
preset. The full run took 22 minutes on a
shared 2-core CPU. `import simmim_jax` sets glibc's malloc for XLA
(simmim_jax/allocator.py); the report records what it set.
"""

import dataclasses
import sys

from absl import flags

from experiments import cli
from experiments.benchmark import cases as benchmark_cases
from experiments.benchmark import report as benchmark_report
from experiments.benchmark import suite as benchmarks
from simmim_jax import checks
from simmim_jax.models import model_config

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'where the results go')
_QUICK = flags.DEFINE_bool('quick', False, 'tiny sizes and short lengths')
_DEVICE = flags.DEFINE_bool(
    'device', False, 'an accelerator in a few minutes: bf16 segment '
    'attention and its PyTorch flash peer, the simmim and transformer train '
    'steps, at 8k and 32k tokens')
_SEGMENT_LEN = flags.DEFINE_integer('segment_len', None,
                                    "segment length (default: the preset's)")
_LENGTHS = flags.DEFINE_list('lengths', None,
                             'sequence lengths (default: the preset\'s)')
_REPEATS = flags.DEFINE_integer('repeats', None,
                                'timed calls per case after a warm-up')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'],
                           "inputs and compute dtype (softmax stays float32; "
                           "default: the preset's)")
_REMAT = flags.DEFINE_enum(
    'remat', 'none', list(model_config.REMAT_POLICIES),
    'what each block of the layer and train-step models keeps for the '
    "backward: everything, only its input ('full'), or its dense "
    "projections' outputs ('projections'); see ModelConfig.remat")
_MEMORY_BUDGET = flags.DEFINE_float(
    'memory_budget_gib', None, 'do not run cases whose compiled peak memory '
    'exceeds this (GiB)')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds_per_call', None, 'do not run cases predicted to take longer '
    'per call: FLOPs at the measured matmul ceiling, or the time at the last '
    'shorter length scaled by FLOPs')
_GROUPS = flags.DEFINE_list(
    'groups', None, "which cases: any of 'op', 'layer', 'train_step', "
    "'decode' (default: all)")
_COMPILE_DEPTHS = flags.DEFINE_list(
    'compile_depths', None, 'train-step depths whose compile time is '
    "measured, cold and warm (default: the preset's; empty: none)")
flags.mark_flag_as_required('out_dir')


def config_from_flags() -> benchmarks.BenchmarkConfig:
  """The --quick or full preset with the other flags applied; a bad flag
  raises a ConfigError naming it."""
  if _QUICK.value and _DEVICE.value:
    raise checks.ConfigError('--quick and --device are two presets: pick one')
  config = (benchmarks.QUICK if _QUICK.value else
            benchmarks.DEVICE if _DEVICE.value else
            benchmarks.BenchmarkConfig())
  sizes = {'remat': _REMAT.value}
  if _DTYPE.value is not None:
    sizes['dtype'] = _DTYPE.value
  if _SEGMENT_LEN.value is not None:
    sizes['segment_len'] = checks.integer(_SEGMENT_LEN.value, '--segment_len')
  changes = {'sizes': dataclasses.replace(config.sizes, **sizes)}
  if _GROUPS.value:
    unknown = sorted(set(_GROUPS.value) - set(benchmark_cases.GROUPS))
    if unknown:
      raise checks.ConfigError(f'--groups: unknown {unknown}; choose from '
                               f'{list(benchmark_cases.GROUPS)}')
    changes['groups'] = tuple(_GROUPS.value)
  if _LENGTHS.value:
    lengths = cli.int_list(_LENGTHS.value, '--lengths')
    changes.update(lengths=lengths, train_step_lengths=lengths,
                   decode_lengths=lengths)
  if _COMPILE_DEPTHS.value is not None:  # --compile_depths= gives []
    changes['compile_depths'] = (cli.int_list(_COMPILE_DEPTHS.value,
                                              '--compile_depths')
                                 if _COMPILE_DEPTHS.value else ())
  if _REPEATS.value is not None:
    changes['repeats'] = checks.integer(_REPEATS.value, '--repeats')
  for name, flag in (('memory_budget_gib', _MEMORY_BUDGET),
                     ('max_seconds_per_call', _MAX_SECONDS)):
    if flag.value is not None:
      changes[name] = checks.number(flag.value, f'--{name}', low_open=True)
  return dataclasses.replace(config, **changes)


def main(argv):
  del argv  # cli.run refuses extra arguments
  report = benchmarks.run(
      config_from_flags(), _OUT_DIR.value,
      command=['python -m experiments.benchmark', *sys.argv[1:]])
  print(benchmark_report.to_markdown(report))


if __name__ == '__main__':
  cli.run(main)
