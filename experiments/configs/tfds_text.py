r"""Any text-classification TFDS dataset you have, read as bytes (LRA Text).

Defaults to imdb_reviews (LRA's byte-level text task, length 1000 or 4000);
the dataset must already be prepared in array_record format under data_dir
(this machine cannot download it; `tfds build imdb_reviews
--file_format=array_record` where it can). Pair tasks (LRA Retrieval) set
data.other_input_key; the dual encoder is then used.

  python -m experiments.train --config=experiments/configs/tfds_text.py:lra \
      --workdir=runs/imdb --config.data.data_dir=/path/to/tensorflow_datasets
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'lra') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'tfds'
  config.data.dataset = 'imdb_reviews/plain_text'
  config.data.input_key = 'text'
  config.data.label_key = 'label'
  config.data.encoding = 'bytes'
  config.data.train_split = 'train'
  config.data.eval_splits = ('test',)
  config.eval_split = 'test'       # imdb has no validation split
  config.test_split = ''
  m = config.model
  m.family = 'simmim'

  if variant == 'lra':
    # LRA Text: 4 layers, d 256, 4 heads, mlp 1024, length 1000 (4000 also
    # common), batch 32, 20k steps.
    config.data.max_len = 1000
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 256, 4, 4, 1024
    m.segment_len = 100
    config.batch_size = config.eval_batch_size = 32
    config.num_steps = 20000
    config.learning_rate = 0.05 / 8000 ** 0.5
    config.schedule = 'rsqrt'
    config.warmup_steps = 8000
    config.weight_decay = 0.1
    config.log_every = 100
    config.eval_every = config.checkpoint_every = 1000
  elif variant == 'tiny':
    config.data.max_len = 256
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 128
    m.segment_len = 32
    config.batch_size = config.eval_batch_size = 16
    config.num_steps = 500
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 250
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'lra' or 'tiny'")
  return config
