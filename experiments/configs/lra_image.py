r"""LRA Image: CIFAR-10 as 1,024 grayscale pixel tokens, from your own copy.

Put CIFAR-10's python release (`cifar-10-python.tar.gz` or its extracted
`cifar-10-batches-py/`) in data.manual_dir; `lra_image/cifar10` is built from
it on first use with LRA's grayscale and LRA's train/validation cut
(simmim_jax/data/lra_image.py). Pixel v is token v + 1, so a black pixel is
not padding (LRA's pipeline masked pixels of value 0).

Variants (after the colon):
  lra:     LRA's protocol (lra_benchmarks/image/configs/cifar10): 1 layer,
           d 32, 1 head, mlp 64, batch 256, 35,000 steps (200 epochs),
           peak 5e-4 with 175 warmup steps and cosine decay, no weight
           decay, dropout 0.3; LRA pools with a CLS token, which this
           codebase does not have: mean pooling stands in.
  lra_cpu: the same data with the 2-layer d 64 model for 2 CPU cores. On
           a quiet 2-core machine the whole run took 11.4 minutes: 7 s to
           build from full-size random files (experiments/
           synthetic_lra_files.py --images_per_batch=10000), then 1,500
           steps of 0.40 s (batch 32 x 1,024 tokens) and the evaluations.

  python -m experiments.train \
      --config=experiments/configs/lra_image.py:lra_cpu \
      --workdir=runs/lra_image --config.data.manual_dir=/path/to/cifar
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'lra_cpu') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'lra_image'
  config.data.builder_config = 'cifar10'
  config.data.max_len = 1024
  config.best_metric = 'eval_accuracy'
  m = config.model
  m.family = 'simmim'              # 'simmim' | 'local' | 'transformer'
  m.segment_len = 32               # one image row per segment
  m.pooling = 'mean'

  if variant == 'lra':
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 32, 1, 1, 64
    m.dropout_rate = 0.3
    config.batch_size = config.eval_batch_size = 256
    config.num_steps = 35_000
    config.learning_rate = 5e-4
    config.schedule = 'cosine'
    config.warmup_steps = 175
    config.weight_decay = 0.0
    config.grad_clip_norm = 0.0
    config.log_every = 175
    config.eval_every = config.checkpoint_every = 1750
  elif variant == 'lra_cpu':
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 128
    config.batch_size = config.eval_batch_size = 32
    config.num_steps = 1500
    config.learning_rate = 1e-3
    config.schedule = 'cosine'
    config.warmup_steps = 75
    config.weight_decay = 0.01
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 500
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'lra' or 'lra_cpu'")
  return config
