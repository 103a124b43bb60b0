"""Seq2seq evaluation by generation: greedy decoding scored with sacrebleu.

Teacher-forced loss and token accuracy come from the eval step like every
task's; this adds what a reader of a translation or summarisation result
wants: corpus BLEU and chrF of greedy outputs, the same scores for a trivial
baseline (always the most frequent training target), and samples.
"""

import collections
import os
from typing import Any, Optional

import numpy as np
import sacrebleu

from simmim_jax.inference import decoding

SAMPLES_FILE = 'samples.txt'
# The baseline counts targets over at most this many training examples.
BASELINE_EXAMPLES = 100_000


def scores(outputs: list[str], references: list[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu defaults), 0-100."""
  return {'bleu': sacrebleu.corpus_bleu(outputs, [references]).score,
          'chrf': sacrebleu.corpus_chrf(outputs, [references]).score}


def greedy_outputs(model, params, datasets, split: str,
                   limit: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
  """(raw examples, greedy output texts) of the first `limit` examples of
  `split` (0: all): each decoded from the start token until the end token
  or the decoder's target_len."""
  target_len = model.config.decoder_config.max_len
  elements, batches = datasets.first_examples(split, limit)
  outputs = []
  for batch in batches:
    prompt = np.full((batch['tokens'].shape[0], 1), datasets.start_id,
                     np.int32)
    tokens = decoding.generate(
        model, params, prompt, max_new_tokens=target_len - 1,
        eos_id=datasets.end_id, source=batch['tokens'],
        source_mask=batch['mask'])
    outputs += [datasets.decode_text(row) for row in np.asarray(tokens)]
  return elements, outputs[:len(elements)]


def generation_metrics(model, params, datasets, split: str,
                       limit: int = 0) -> dict[str, float]:
  """{'bleu', 'chrf'} of greedy outputs on `split` (see greedy_outputs)."""
  elements, outputs = greedy_outputs(model, params, datasets, split, limit)
  return scores(outputs, references(datasets, elements))


def references(datasets, elements) -> list[str]:
  return [datasets.feature_text(e[datasets.target_key]) for e in elements]


def most_frequent_target(datasets) -> tuple[str, int]:
  """(the most frequent training target text, examples counted); ties go
  to the target seen first."""
  source = datasets.train_source
  count = min(len(source), BASELINE_EXAMPLES)
  counts = collections.Counter(
      datasets.feature_text(source[i][datasets.target_key])
      for i in range(count))
  return counts.most_common(1)[0][0], count


def test_report(model, params, datasets, split: str, limit: int,
                workdir: Optional[str],
                num_samples: int = 20) -> dict[str, Any]:
  """Scores on `split` plus the baseline's; writes DIR/samples.txt (unless
  workdir is None).

  Returns {'test_bleu', 'test_chrf', 'baseline': {'test_bleu', 'test_chrf',
  'target', 'train_examples_counted'}}.
  """
  elements, outputs = greedy_outputs(model, params, datasets, split, limit)
  refs = references(datasets, elements)
  target, counted = most_frequent_target(datasets)
  baseline = {f'test_{k}': v for k, v in
              scores([target] * len(refs), refs).items()}
  baseline.update(target=target, train_examples_counted=counted)
  if workdir is not None:
    with open(os.path.join(workdir, SAMPLES_FILE), 'w',
              encoding='utf-8') as f:
      for i, (element, ref, out) in enumerate(
          zip(elements[:num_samples], refs, outputs)):
        f.write(f'=== {split} example {i}\n--- source\n'
                f'{datasets.feature_text(element[datasets.input_key])}\n'
                f'--- reference\n{ref}\n--- output\n{out}\n\n')
  return {**{f'test_{k}': v for k, v in scores(outputs, refs).items()},
          'baseline': baseline}
