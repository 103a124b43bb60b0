r"""Multi-query associative recall (Zoology), generated locally and seeded.

The model is a causal LM scored at the query positions only: the metrics are
eval_query_accuracy and eval_query_loss. The data setting is the builder
config's name (simmim_jax/data/mqar.py): L<seq_len>_kv<pairs>[_v<vocab>]
[_a<power_a>][_n<train examples>]; any such name builds on first use.

Variants (after the colon):
  tiny:    64 tokens, 4 pairs, vocabulary 64: a few minutes on 2 cores.
  cpu:     128 tokens, 8 pairs, vocabulary 256, queries spread uniformly
           (power_a 1), segments of 32: 86% of the queries sit segments
           away from their key. The starting point of the recall study;
           0.23 s a step on 2 cores, about 12 minutes for 3,000 steps.
  zoology: Zoology's data at 512 tokens: 64 pairs, vocabulary 8,192,
           power_a 0.01, 100,000 training examples; a 2-layer d 128 model.
           (Zoology sweeps the learning rate; sweep it here too.)

  python -m experiments.train --config=experiments/configs/mqar.py:tiny \
      --workdir=runs/mqar_tiny --config.model.family=transformer
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'mqar'
  config.best_metric = 'eval_query_accuracy'
  m = config.model
  m.family = 'simmim'              # 'simmim' | 'local' | 'transformer'
  m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 128
  config.schedule = 'cosine'
  config.weight_decay = 0.1
  config.log_every = 50

  if variant == 'tiny':
    config.data.builder_config = 'L64_kv4_v64_n20000'
    config.data.max_len = 64
    m.segment_len = 16
    config.batch_size = config.eval_batch_size = 64
    config.num_steps = 1000
    config.learning_rate = 3e-3
    config.warmup_steps = 50
    config.eval_every = config.checkpoint_every = 500
  elif variant == 'cpu':
    config.data.builder_config = 'L128_kv8_v256_a1'
    config.data.max_len = 128
    m.segment_len = 32
    config.batch_size = config.eval_batch_size = 64
    config.num_steps = 3000
    config.learning_rate = 3e-3
    config.warmup_steps = 150
    config.eval_every = config.checkpoint_every = 500
  elif variant == 'zoology':
    config.data.builder_config = 'L512_kv64'
    config.data.max_len = 512
    m.d_model, m.mlp_dim = 128, 256
    m.segment_len = 64
    config.batch_size = config.eval_batch_size = 64
    config.num_steps = 20000
    config.learning_rate = 1e-3
    config.warmup_steps = 1000
    config.eval_every = config.checkpoint_every = 2000
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'tiny', 'cpu' or "
                     "'zoology'")
  return config
