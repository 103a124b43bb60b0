"""The eval pass of a training run over one split."""

from typing import Any

import jax

from simmim_jax.inference import seq2seq_eval
from simmim_jax.training import sharding
from simmim_jax.training import steps
from simmim_jax.training.run_setup import JitSteps
from simmim_jax.training.run_setup import RunSetup


def evaluate(run: RunSetup, jitted: JitSteps, params: Any, split: str,
             prefix: str = 'eval', generation: bool = True
             ) -> dict[str, float]:
  """Metrics of `params` on `split`, named '<prefix>_<metric>'.

  The eval step's sums over every batch of the split; a seq2seq run also
  greedily decodes config.decode_examples examples and scores them (BLEU,
  chrF) unless `generation` is False.
  """
  sums = jax.device_put(
      steps.empty_metrics(train=False, masked=run.masking_spec is not None),
      jitted.replicated)
  for local_batch in run.datasets.eval_batches(split):
    sums = jitted.eval(params, sharding.global_batch(local_batch, run.mesh),
                       sums)
  metrics = steps.summarize(jax.device_get(sums), run.step_task)
  if run.task == 'seq2seq' and generation:
    metrics.update(seq2seq_eval.generation_metrics(
        run.model, params, run.datasets, split, run.config.decode_examples))
  return {f'{prefix}_{k}': v for k, v in metrics.items()}
