r"""Label distribution of a classification config's eval split, and the
accuracy of always answering the majority class (the chance baseline).

  python -m experiments.data_stats --config=experiments/configs/listops.py:tiny
"""

import collections

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from simmim_jax import checks
from simmim_jax import data

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config')
flags.mark_flag_as_required('config')


def main(argv):
  del argv  # cli.run refuses extra arguments
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  if datasets.task not in ('classification', 'dual'):
    raise checks.ConfigError(f'data_stats needs a classification task; '
                             f'{config.data.name} is a {datasets.task!r} task')
  for split in datasets.eval_splits:
    counts = collections.Counter()
    for batch in datasets.eval_batches(split):
      counts.update(int(label) for label, weight in
                    zip(batch['label'], batch['weight']) if weight > 0)
    total = sum(counts.values())
    label, top = counts.most_common(1)[0]
    shares = ', '.join(f'{k}: {v / total:.3f}'
                       for k, v in sorted(counts.items()))
    print(f'{split}: {total} examples; majority class {label} = '
          f'{top / total:.3f} accuracy; {shares}')


if __name__ == '__main__':
  cli.run(main)
