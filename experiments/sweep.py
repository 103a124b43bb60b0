r"""Runs a sweep of training runs and summarizes it; rerun to resume.

  python -m experiments.sweep --config=experiments/configs/listops.py:small \
      --sweep=experiments/sweeps/families.py --workdir=runs/families \
      [--config.num_steps=2000 ...] [--parallel=2] [--dry_run] \
      [--summarize_only] [--target=eval_accuracy:0.4]

Each point runs `python -m experiments.train` in its own process into
DIR/<point name>; `--config.` flags apply to every point. `--parallel=N` runs
N points at once, each pinned to its share of the CPU cores (on a GPU host,
its share of the GPUs through CUDA_VISIBLE_DEVICES; on a TPU host keep N=1,
one process owns the chips). A point fine-tuned from another
(`sweep.fine_tune`) starts once that one has finished. `--dry_run` prints one
command per point for an external scheduler, in an order that runs each
pretraining point before its fine-tuning; `--summarize_only` summarizes
whatever points finished.
Exit status: the number of failed points (at most 125); 130 / 143 when
stopped by SIGINT / SIGTERM.
"""

import signal
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from simmim_jax import checks
from simmim_jax import sweep
from simmim_jax.sweep import summary as sweep_summary

config_flags.DEFINE_config_file(
    'config', None, 'experiment config file, optionally :variant',
    lock_config=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'sweep file, optionally :variant')
_WORKDIR = flags.DEFINE_string('workdir', None, 'sweep directory')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'points run at once')
_DRY_RUN = flags.DEFINE_bool('dry_run', False,
                             'print one train command per point; run none')
_SUMMARIZE_ONLY = flags.DEFINE_bool(
    'summarize_only', False, 'write the summary of the finished points only')
_TARGET = flags.DEFINE_string(
    'target', None, 'METRIC:VALUE, e.g. eval_accuracy:0.4: the summary gives '
    'the steps and training seconds each point took to reach it')
flags.mark_flags_as_required(['config', 'sweep', 'workdir'])


def main(argv):
  del argv  # cli.run refuses extra arguments
  # --config is parsed again per point, from the raw flags (same code).
  config_spec, overrides = raw_config_flags(sys.argv[1:])
  points = sweep.make_points(config_spec, sweep.load_sweep(_SWEEP.value),
                             overrides)
  with cli.user_errors():
    target = sweep_summary.parse_target(_TARGET.value)
  if _DRY_RUN.value:
    print('\n'.join(sweep.dry_run_commands(points, _WORKDIR.value)))
    return 0
  if _SUMMARIZE_ONLY.value:
    statuses = {p.name: sweep.point_status(p, _WORKDIR.value) for p in points}
    sweep_summary.write_summary(_WORKDIR.value, points, statuses,
                                target=target)
    print(sweep_summary.status_line(statuses))
    return 0
  result = sweep.run_sweep(points, _WORKDIR.value, parallel=_PARALLEL.value,
                           target=target)
  print(sweep_summary.status_line(result.statuses))
  print(f'summary: {_WORKDIR.value}/summary.md, summary_grouped.md')
  if result.interrupted:
    return 128 + (result.signal or signal.SIGINT)
  return min(result.failed, 125)


def raw_config_flags(args: list[str]) -> tuple[str, list[tuple[str, str]]]:
  """The --config=SPEC text and the --config.<field>=<value> flags, as
  (field, text) pairs in order, exactly as given."""
  spec, overrides = None, []
  for index, arg in enumerate(args):
    if arg == '--config' and index + 1 < len(args):
      spec = args[index + 1]
    elif arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg.startswith('--config.'):
      key, equals, value = arg[len('--config.'):].partition('=')
      if not equals:
        raise checks.ConfigError(f'write {arg} as --config.<field>=<value>')
      overrides.append((key, value))
  return spec, overrides


if __name__ == '__main__':
  cli.run(main)
