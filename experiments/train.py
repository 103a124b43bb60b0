r"""Trains and evaluates a model; resumes from DIR/checkpoints if present.

  python -m experiments.train --config=experiments/configs/listops.py:tiny \
      --workdir=runs/listops_tiny [--config.model.family=transformer ...]

Multi-host: add --distributed (TPU pods detect the rest), or on CPU/GPU
processes --distributed --coordinator_address=HOST:PORT --num_processes=N
--process_id=I.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from simmim_jax.training import sharding
from simmim_jax.training import train
from simmim_jax.training.experiment_config import validate_config

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'experiment config file, optionally :variant',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'join a multi-process run (jax.distributed)')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0 (with --distributed;'
    ' default: detected, or $JAX_COORDINATOR_ADDRESS)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'processes in the run (--distributed)')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   "this process's index (--distributed)")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv  # cli.run refuses extra arguments
  logging.set_verbosity(logging.WARNING)
  with cli.user_errors():  # a bad config fails before anything starts
    validate_config(_CONFIG.value)
  cli.enable_compilation_cache(_CONFIG.value.compilation_cache_dir)
  if _DISTRIBUTED.value:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
  _, results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(results)


if __name__ == '__main__':
  cli.run(main)
