r"""LRA Retrieval: do two ACL Anthology papers cite each other? From your copy.

Put LRA's released `new_aan_pairs.{train,eval,test}.tsv` (from
lra_release/tsv_data/) in data.manual_dir; `lra_retrieval/aan` is built from
them on first use (simmim_jax/data/lra_retrieval.py), each text cut to 4,000
bytes. Both texts go through one shared encoder (the dual encoder).

Variants (after the colon):
  lra:     LRA's protocol (lra_benchmarks/matching/configs/
           base_match_config.py): 4 layers, d 128, 4 heads, mlp 512, 4,000
           bytes per text, batch 32, 5,000 steps, dropout 0.1, weight decay
           0.1, no clipping. LRA's rate is 0.05 x linear warmup over 8,000
           steps x rsqrt decay, so training ends inside the warmup; the same
           rates are a 5,000-step warmup to 0.05 * 5000 / 8000 / sqrt(8000).
  lra_cpu: the same data with the 2-layer d 64 model for 2 CPU cores: 14.4
           minutes in all on random files of the release's format
           (experiments/synthetic_lra_files.py), 2.1 s a step.

  python -m experiments.train \
      --config=experiments/configs/lra_retrieval.py:lra_cpu \
      --workdir=runs/lra_retrieval --config.data.manual_dir=/path/to/tsv_data
"""

import ml_collections

from simmim_jax.training.experiment_config import base_config


def get_config(variant: str = 'lra_cpu') -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = 'lra_retrieval'
  config.data.builder_config = 'aan'
  config.data.max_len = 4000
  config.best_metric = 'eval_accuracy'
  m = config.model
  m.family = 'simmim'              # 'simmim' | 'local' | 'transformer'
  m.segment_len = 125              # 32 segments per text

  if variant == 'lra':
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 128, 4, 4, 512
    m.dropout_rate = 0.1
    m.positions = 'sinusoidal'
    config.batch_size = config.eval_batch_size = 32
    config.num_steps = 5000
    config.learning_rate = 0.05 * 5000 / 8000 / 8000 ** 0.5
    config.schedule = 'constant'   # training ends inside LRA's warmup
    config.warmup_steps = 5000
    config.weight_decay = 0.1
    config.grad_clip_norm = 0.0
    config.log_every = 100
    config.eval_every = config.checkpoint_every = 500
  elif variant == 'lra_cpu':
    m.d_model, m.num_heads, m.num_layers, m.mlp_dim = 64, 4, 2, 128
    # 1,000 validation and 2,000 test pairs: full passes over AAN's eval and
    # test files would cost more than the training on 2 cores.
    config.data.eval_splits = ('validation[:1000]', 'test[:2000]')
    config.eval_split, config.test_split = config.data.eval_splits
    config.batch_size = config.eval_batch_size = 8
    config.num_steps = 300
    config.learning_rate = 1e-3
    config.schedule = 'cosine'
    config.warmup_steps = 30
    config.weight_decay = 0.01
    config.log_every = 25
    config.eval_every = config.checkpoint_every = 150
  else:
    raise ValueError(f"unknown variant {variant!r}: use 'lra' or 'lra_cpu'")
  return config
