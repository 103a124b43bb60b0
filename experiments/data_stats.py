r"""Label distribution of a classification config's eval splits, and the
accuracy of always answering the majority class (the chance baseline); for
MQAR, how far the queries sit from their keys and the share in their key's
segment.

  python -m experiments.data_stats --config=experiments/configs/listops.py:tiny
  python -m experiments.data_stats --config=experiments/configs/mqar.py:tiny
"""

import collections

from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from experiments import cli
from simmim_jax import checks
from simmim_jax import data
from simmim_jax.data import mqar

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config')
flags.mark_flag_as_required('config')


def main(argv):
  del argv  # cli.run refuses extra arguments
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  if datasets.task == 'recall':
    _recall_stats(config, datasets)
    return
  if datasets.task not in ('classification', 'dual'):
    raise checks.ConfigError(f'data_stats needs a classification or recall '
                             f'task; {config.data.name} is a '
                             f'{datasets.task!r} task')
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


def _recall_stats(config, datasets) -> None:
  """MQAR: how far queries sit from their keys, and the share that
  attention inside segments of model.segment_len alone can answer."""
  pairs = mqar.parse_config(config.data.builder_config).num_kv_pairs
  for split in datasets.eval_splits:
    batches = list(datasets.eval_batches(split))
    real = np.concatenate([b['weight'] > 0 for b in batches])
    # Back from ids (value + 1; 0 = not scored) to the data's values.
    tokens = np.concatenate([b['tokens'] for b in batches])[real] - 1
    targets = np.concatenate([b['targets'] for b in batches])[real] - 1
    queries, keys = mqar.query_key_positions(tokens, targets, pairs)
    share = mqar.same_segment_share(tokens, targets, pairs,
                                    config.model.segment_len)
    print(f'{split}: {len(queries)} queries; key-to-query distance mean '
          f'{np.mean(queries - keys):.1f}, median '
          f'{np.median(queries - keys):.0f} tokens; {share:.3f} in their '
          f"key's segment (segment_len {config.model.segment_len})")


if __name__ == '__main__':
  cli.run(main)
