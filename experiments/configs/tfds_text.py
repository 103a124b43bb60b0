r"""Any text-classification TFDS dataset you have, read as bytes.

Defaults to imdb_reviews; the dataset must already be prepared in
array_record format under data_dir (this codebase fetches nothing; `tfds
build imdb_reviews --file_format=array_record` where it can download). Pair
tasks set data.other_input_key (the dual encoder is then used), seq2seq
tasks data.target_key. LRA's Text task with LRA's protocol is lra_text.py.

  python -m experiments.train --config=experiments/configs/tfds_text.py:tiny \
      --workdir=runs/imdb --config.data.data_dir=/path/to/tensorflow_datasets
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
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

  if variant == 'tiny':
    config.data.max_len = 256
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 128
    m.segment_len = 32
    config.batch_size = config.eval_batch_size = 16
    config.num_steps = 500
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 250
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'tiny'")
  return config
