r"""Byte-level language modelling on the Python standard library's sources.

The corpus (`byte_lm`) is built offline from the running Python's stdlib,
split by file; the metric is bits per byte on the validation split.

Variants: tiny (CPU smoke, a few minutes), small (CPU research size).

  python -m experiments.train --config=experiments/configs/byte_lm.py:tiny \
      --workdir=runs/byte_lm_tiny --config.model.family=local
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'byte_lm'
  config.best_metric = 'eval_bits_per_byte'
  config.best_mode = 'min'
  m = config.model
  m.family = 'simmim'              # 'simmim' | 'local' | 'transformer'

  if variant == 'tiny':
    config.data.builder_config = 'small'  # ~2 MB of train text
    config.data.max_len = 256
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 256
    m.segment_len = 32
    config.batch_size = config.eval_batch_size = 16
    config.num_steps = 1000
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 500
  elif variant == 'small':
    config.data.builder_config = 'full'   # the whole stdlib (~12 MB)
    config.data.max_len = 1024
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 256, 4, 4, 1024
    m.segment_len = 128
    config.batch_size = config.eval_batch_size = 16
    config.num_steps = 10000
    config.learning_rate = 1e-3
    config.warmup_steps = 500
    config.log_every = 100
    config.eval_every = config.checkpoint_every = 1000
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'tiny' or 'small'")
  return config
