r"""Seq2seq on the standard library: a function's source -> its docstring's
first sentence (`stdlib_docstrings`, built offline from this Python).

Byte level, encoder-decoder (head 'seq2seq'); scored by greedy decoding
with sacrebleu BLEU and chrF against a most-frequent-target baseline.

Variants: tiny (a few minutes on 2 CPU cores), small (CPU research size).

  python -m experiments.train --config=experiments/configs/docstrings.py:tiny \
      --workdir=runs/docstrings_tiny \
      --config.model.cross_attention=segment_states
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'stdlib_docstrings'
  config.best_metric = 'eval_loss'
  config.best_mode = 'min'
  m = config.model
  m.family = 'simmim'              # the encoder: 'simmim' | 'local' | ...
  m.decoder_family = 'transformer'  # targets are short: full attention
  m.cross_attention = 'full'       # | 'segment_states'

  if variant == 'tiny':
    config.data.builder_config = 'small'
    config.data.max_len = 256      # source bytes (longer sources are cut)
    config.data.target_max_len = 64
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 256
    m.decoder_layers = 2
    m.segment_len = 32
    config.batch_size = config.eval_batch_size = 32
    config.num_steps = 1200
    config.learning_rate = 2e-3
    config.warmup_steps = 60
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 600
    config.decode_examples = 200
  elif variant == 'small':
    config.data.builder_config = 'full'
    config.data.max_len = 1024
    config.data.target_max_len = 128
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 256, 4, 4, 1024
    m.decoder_layers = 4
    m.segment_len = 128
    config.batch_size = config.eval_batch_size = 32
    config.num_steps = 10000
    config.learning_rate = 1e-3
    config.warmup_steps = 500
    config.log_every = 100
    config.eval_every = config.checkpoint_every = 1000
    config.decode_examples = 500
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'tiny' or 'small'")
  return config
