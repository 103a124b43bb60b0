r"""Trains and evaluates a model; resumes from DIR/checkpoints if present.

  python -m experiments.train --config=experiments/configs/listops.py:tiny \
      --workdir=runs/listops_tiny [--config.model.family=transformer ...]
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simmim_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'experiment config file, optionally :variant',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  _, results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(results)


if __name__ == '__main__':
  app.run(main)
