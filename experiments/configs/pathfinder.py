r"""LRA Pathfinder and Path-X, drawn here (simmim_jax/data/pathfinder.py).

Is there a path between the two markers? An image of r x r pixels is fed as
r * r tokens of 8-bit gray values (pixel v is token v + 1). The images are
drawn on first use, seeded, with Linsley et al.'s algorithm at LRA's
settings: `pf{32,64,128}_{easy,intermediate,hard}` at LRA's sizes, and
`pf32_{easy,hard}_small` (20,000 / 2,000 / 2,000) for CPU runs.

Variants (after the colon):
  lra:       LRA's Pathfinder (lra_benchmarks/image/configs/pathfinder32,
             transformer_base) on pf32_hard: 1 layer, d 128, 4 heads, mlp
             128, mean pooling, sinusoidal positions, batch 512, 62,400 steps
             (200 epochs), peak 1e-3 with 312 warmup steps and cosine decay,
             no weight decay, dropout 0.2.
  pathx_lra: the same protocol on pf128_hard (Path-X, 16,384 pixels).
  lra_cpu:   pf32_hard_small with the 2-layer d 64 model for 2 CPU cores;
             --config.data.builder_config=pf32_easy_small for the easy set.
             On a quiet 2-core machine the whole run took 15.0 minutes:
             2 min 47 s of drawing (24,000 images), then 1,500 steps of
             0.45-0.48 s (batch 32 x 1,024 tokens). It ended at chance (test
             accuracy 0.500, as at 2,000 steps: 0.511): learning Pathfinder
             needs more steps than this budget.

  python -m experiments.train \
      --config=experiments/configs/pathfinder.py:lra_cpu \
      --workdir=runs/pf32_hard
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'lra_cpu') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'lra_pathfinder'
  config.data.builder_config = 'pf32_hard'
  config.data.max_len = 32 * 32
  config.best_metric = 'eval_accuracy'
  m = config.model
  m.family = 'simmim'              # 'simmim' | 'local' | 'transformer'
  m.segment_len = 32               # one image row per segment
  m.pooling = 'mean'

  if variant in ('lra', 'pathx_lra'):
    if variant == 'pathx_lra':
      config.data.builder_config = 'pf128_hard'
      config.data.max_len = 128 * 128
      m.segment_len = 128
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 128, 4, 1, 128
    m.dropout_rate = 0.2
    m.positions = 'sinusoidal'
    config.batch_size = config.eval_batch_size = 512
    config.num_steps = 62_400
    config.learning_rate = 1e-3
    config.schedule = 'cosine'
    config.warmup_steps = 312
    config.weight_decay = 0.0
    config.grad_clip_norm = 0.0
    config.log_every = 312
    config.eval_every = config.checkpoint_every = 3120
  elif variant == 'lra_cpu':
    config.data.builder_config = 'pf32_hard_small'
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
    raise ValueError(f"unknown variant {variant!r}: use 'lra', 'pathx_lra' "
                     "or 'lra_cpu'")
  return config
