r"""The seed's attention-template study, end to end.

1. Train the original model (softmax attention), or load it if WORKDIR/original
   holds the finished run.
2. For each K: fit a K-template library per layer and head to the original
   model's queries (k-means) and swap it in (evaluated as is), then fine-tune
   only the templates and the head.
3. Compare with the original: accuracy, inference time per example, attention
   FLOPs and peak memory (XLA's compiled cost), trainable-parameter fraction.

  python -m experiments.labs.templates \
      --config=experiments/configs/listops.py:tiny \
      --config.model.family=transformer --workdir=runs/templates

Writes WORKDIR/templates.{json,md} and, with matplotlib, WORKDIR/templates.png.
"""

import copy
import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from simmim_jax import cost
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.models import build_model
from simmim_jax.ops import attention
from simmim_jax.ops import templates as templates_lib
from simmim_jax.training import run_dir
from simmim_jax.training import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'original model')
_WORKDIR = flags.DEFINE_string('workdir', None, 'study directory')
_KS = flags.DEFINE_list('ks', ['8', '16', '32', '64'], 'library sizes K')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 300,
                                       'template-only fine-tuning steps')
_COST_LENGTH = flags.DEFINE_integer('cost_length', 2000,
                                    'length at which FLOPs/memory are read')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'timing repeats (median)')
flags.mark_flags_as_required(['config', 'workdir'])


def attention_flops(model_fields: dict, length: int) -> float:
  """XLA FLOPs of one layer's token attention at `length` (batch 1); causal
  for the LM."""
  cfg = ModelConfig.from_dict({**model_fields, 'max_len': length})
  qkv = jax.ShapeDtypeStruct((1, length, cfg.num_heads, cfg.head_dim),
                             jnp.float32)
  library = jax.ShapeDtypeStruct((cfg.num_heads, cfg.num_templates,
                                  cfg.head_dim), jnp.float32)
  segment_len = None if cfg.family == 'transformer' else cfg.segment_len
  causal = cfg.head == 'lm'
  if cfg.attention_kind == 'templates':
    def fn(q, k, v, a):
      assignments = templates_lib.assign_templates(q, a)
      if causal:
        return templates_lib.causal_template_attention(
            a, assignments, k, v, segment_len=segment_len)
      if segment_len is None:
        return templates_lib.template_attention(a, assignments, k, v)
      return templates_lib.segment_template_attention(a, assignments, k, v,
                                                      segment_len)
    return cost.compiled_cost(fn, qkv, qkv, qkv, library)['flops']
  if segment_len is None:
    fn = lambda q, k, v: attention.full_attention(q, k, v, causal=causal)
  else:
    fn = lambda q, k, v: attention.segment_attention(q, k, v, segment_len,
                                                     causal=causal)
  return cost.compiled_cost(fn, qkv, qkv, qkv)['flops']


def model_costs(model_fields: dict, batch: int, trained_length: int,
                cost_length: int, repeats: int) -> dict[str, float]:
  """Inference seconds per example (trained length) and whole-model FLOPs
  and peak memory per example at `cost_length`."""
  fields = {**model_fields, 'max_len': max(trained_length, cost_length)}
  model = build_model(ModelConfig.from_dict(fields))
  tokens = jax.random.randint(jax.random.key(0), (batch, trained_length), 1,
                              fields['vocab_size'])
  params = jax.jit(model.init)(jax.random.key(1), tokens)
  apply = jax.jit(model.apply)
  seconds = cost.median_seconds(lambda: apply(params, tokens), repeats)
  long_tokens = jax.ShapeDtypeStruct((1, cost_length), jnp.int32)
  compiled = cost.compiled_cost(model.apply, params, long_tokens)
  return {'seconds_per_example': seconds / batch,
          'model_gflops': compiled['flops'] / 1e9,
          'peak_mib': compiled['peak_bytes'] / 2**20}


def run_study(config, workdir: str, ks, finetune_steps: int, cost_length: int,
              repeats: int) -> list[dict]:
  """Trains/loads the original, distils and fine-tunes each K; the rows."""
  original_dir = os.path.join(workdir, 'original')
  _, original = train.train_and_evaluate(config, original_dir)
  base_fields = dataclasses.asdict(run_dir.load_model_config(original_dir))
  rows = [_row('original', None, original, base_fields, config, cost_length,
               repeats)]
  for num_templates in ks:
    fields = {**base_fields, 'attention_kind': 'templates',
              'num_templates': num_templates}
    for stage, steps in (('swapped in', 0), ('templates fine-tuned',
                                             finetune_steps)):
      study = copy.deepcopy(config)
      study.model.attention_kind = 'templates'
      study.model.num_templates = num_templates
      study.init_from = original_dir
      study.template_init = 'kmeans'
      study.trainable = 'templates_and_head'
      study.num_steps = steps
      study.warmup_steps = min(study.warmup_steps, steps // 10)
      study.eval_every = study.checkpoint_every = max(steps, 1)
      study.log_every = max(min(study.log_every, steps), 1)
      name = f'k{num_templates}_{"tuned" if steps else "swapped"}'
      _, results = train.train_and_evaluate(study, os.path.join(workdir, name))
      rows.append(_row(stage, num_templates, results, fields, config,
                       cost_length, repeats))
  return rows


def _row(stage, num_templates, results, fields, config, cost_length,
         repeats) -> dict:
  row = {'stage': stage, 'K': num_templates,
         'eval_accuracy': results['final']['eval_accuracy'],
         'eval_bits_per_byte': results['final'].get('eval_bits_per_byte'),
         'test_accuracy': results.get('test', {}).get('test_accuracy'),
         # Nothing is trained when a library is only swapped in.
         'trainable_fraction': (0.0 if stage == 'swapped in' else
                                results.get('trainable_fraction', 1.0)),
         'attention_gflops': attention_flops(fields, cost_length) / 1e9}
  row.update(model_costs(fields, config.eval_batch_size, config.data.max_len,
                         cost_length, repeats))
  return row


def markdown(rows: list[dict], cost_length: int) -> str:
  """The study table; the LM's rows also give bits per byte."""
  original = rows[0]
  lm = original.get('eval_bits_per_byte') is not None
  bpb_head, bpb_rule = (' eval bits/byte |', '---:|') if lm else ('', '')
  lines = [f'| model | K | eval acc |{bpb_head} test acc | acc kept | '
           f'trainable | attention GFLOPs @{cost_length} | x fewer | model '
           f'GFLOPs @{cost_length} | peak MiB @{cost_length} | ms / example |',
           f'|---|---:|---:|{bpb_rule}---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    kept = r['eval_accuracy'] / original['eval_accuracy']
    fewer = original['attention_gflops'] / r['attention_gflops']
    test = '-' if r['test_accuracy'] is None else f"{r['test_accuracy']:.3f}"
    bpb = f" {r['eval_bits_per_byte']:.3f} |" if lm else ''
    lines.append(
        f"| {r['stage']} | {r['K'] or '-'} | {r['eval_accuracy']:.3f} |{bpb} "
        f"{test} | {kept:.0%} | {r['trainable_fraction']:.1%} | "
        f"{r['attention_gflops']:.4f} | {fewer:.1f} | {r['model_gflops']:.2f} "
        f"| {r['peak_mib']:.1f} | {r['seconds_per_example'] * 1e3:.3f} |")
  return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> bool:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for stage, marker in (('swapped in', 'o--'), ('templates fine-tuned', 's-')):
    mine = [r for r in rows if r['stage'] == stage]
    ax.plot([r['attention_gflops'] for r in mine],
            [r['eval_accuracy'] for r in mine], marker, label=stage)
    for r in mine:
      ax.annotate(f"K={r['K']}", (r['attention_gflops'], r['eval_accuracy']))
  ax.axhline(rows[0]['eval_accuracy'], color='k', lw=1, label='original')
  ax.set_xscale('log')
  ax.set_xlabel('attention GFLOPs per layer (XLA)')
  ax.set_ylabel('eval accuracy')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  workdir = _WORKDIR.value
  rows = run_study(_CONFIG.value, workdir, [int(k) for k in _KS.value],
                   _FINETUNE_STEPS.value, _COST_LENGTH.value, _REPEATS.value)
  table = markdown(rows, _COST_LENGTH.value)
  with open(os.path.join(workdir, 'templates.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, 'templates.md'), 'w') as f:
    f.write(table + '\n')
  plot(rows, os.path.join(workdir, 'templates.png'))
  print(table)
  print(f'study took {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
