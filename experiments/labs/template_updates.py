r"""How to learn the template library: VQ-VAE losses vs EMA k-means.

For each update rule and library size K, trains a template model from scratch
(and, with --distill_from, fine-tunes only the templates and head of a
k-means library fitted to a trained softmax model), then reports accuracy and
how well the library covers the queries the model produces on eval data:
  relative error: sum ||q - nearest template||^2 / sum ||q - mean q||^2,
  templates used: share of templates nearest to at least one query.

  python -m experiments.labs.template_updates \
      --config=experiments/configs/listops.py:tiny \
      --config.model.family=transformer --workdir=runs/template_updates \
      [--distill_from=runs/templates_study/original]

Writes WORKDIR/template_updates.{json,md}.
"""

import copy
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from simmim_jax import data
from simmim_jax.models.attention_maps import find_subtree
from simmim_jax.training import distill
from simmim_jax.training import run_dir
from simmim_jax.training import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'template model')
_WORKDIR = flags.DEFINE_string('workdir', None, 'study directory')
_UPDATES = flags.DEFINE_list('updates', ['vq', 'ema'], 'update rules')
_KS = flags.DEFINE_list('ks', ['16'], 'library sizes K')
_DISTILL_FROM = flags.DEFINE_string(
    'distill_from', None, 'a finished softmax run: also fine-tune a distilled '
    'library with each rule')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 300,
                                       'template-only fine-tuning steps')
_FIT_QUERIES = flags.DEFINE_integer('fit_queries', 20000,
                                    'eval queries for the fit measures')
flags.mark_flags_as_required(['config', 'workdir'])


def library_fit_of_run(config, workdir: str, max_queries: int) -> dict:
  """`distill.library_fit` of a finished template run (its latest
  checkpoint) on its eval split."""
  run = run_dir.load_run(workdir, 'latest')
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  batches = ((b['tokens'], b['mask'])
             for b in datasets.eval_batches(config.eval_split))
  queries = distill.collect_queries(run.model, run.params, batches,
                                    max_queries)
  library = np.asarray(find_subtree(run.params, 'blocks')['attention'][
      'templates']['library'])
  return distill.library_fit(queries, library)


def compare(config, workdir: str, updates, ks, distill_from, finetune_steps,
            fit_queries) -> list[dict]:
  """Trains every (stage, update rule, K) run; one row each."""
  stages = [('from scratch', None)]
  if distill_from:
    stages.append(('distilled + tuned', distill_from))
  rows = []
  for stage, source in stages:
    for num_templates in ks:
      for update in updates:
        run = copy.deepcopy(config)
        run.model.attention_kind = 'templates'
        run.model.num_templates = num_templates
        run.model.template_update = update
        if source:
          run.init_from, run.template_init = source, 'kmeans'
          run.trainable = 'templates_and_head'
          run.num_steps = finetune_steps
          run.warmup_steps = min(run.warmup_steps, finetune_steps // 10)
          run.eval_every = run.checkpoint_every = finetune_steps
        name = f'{"tuned" if source else "scratch"}_k{num_templates}_{update}'
        directory = os.path.join(workdir, name)
        _, results = train.train_and_evaluate(run, directory)
        rows.append({
            'stage': stage, 'update': update, 'K': num_templates,
            'eval_accuracy': results['final']['eval_accuracy'],
            'test_accuracy': results.get('test', {}).get('test_accuracy'),
            'train_seconds': results['wall_seconds'],
            **library_fit_of_run(run, directory, fit_queries)})
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ['| stage | update | K | eval acc | test acc | relative error | '
           'templates used | run s |',
           '|---|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    test = '-' if r['test_accuracy'] is None else f"{r['test_accuracy']:.3f}"
    lines.append(
        f"| {r['stage']} | {r['update']} | {r['K']} | {r['eval_accuracy']:.3f}"
        f" | {test} | {r['relative_error']:.3f} | {r['templates_used']:.0%} | "
        f"{r['train_seconds']:.0f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  workdir = _WORKDIR.value
  rows = compare(_CONFIG.value, workdir, _UPDATES.value,
                 [int(k) for k in _KS.value], _DISTILL_FROM.value,
                 _FINETUNE_STEPS.value, _FIT_QUERIES.value)
  table = markdown(rows)
  with open(os.path.join(workdir, 'template_updates.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, 'template_updates.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  print(f'comparison took {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
