"""Seq2seq evaluation (inference/seq2seq_eval.py): scores are sacrebleu's,
the baseline is a Counter's most frequent target, greedy outputs are
`decoding.generate`'s; test_train.py runs it inside a training run."""

import collections
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

import simmim_jax
from simmim_jax import ModelConfig
from simmim_jax.inference import decoding
from simmim_jax.inference import seq2seq_eval

WORDS = ['<pad>', '<s>', '</s>', 'it', 'is', 'zero', 'one', 'two', 'times',
         'null', 'eins', 'zwei', 'mal']


def _ids(text: str) -> list[int]:
  return [WORDS.index(word) for word in text.split()]


@dataclasses.dataclass
class _Datasets:
  """The part of data.Datasets that seq2seq_eval reads: words as ids."""
  train: list[dict[str, str]]
  test: list[dict[str, str]]
  batch_size: int = 4
  max_len: int = 8
  start_id: int = 1
  end_id: int = 2
  input_key: str = 'de'
  target_key: str = 'en'

  @property
  def train_source(self):
    return self.train

  def first_examples(self, split: str, limit: int = 0) -> tuple[list[Any],
                                                                 Any]:
    assert split == 'test'
    elements = self.test[:limit] if limit else self.test
    batches = []
    for first in range(0, len(elements), self.batch_size):
      tokens = np.zeros((self.batch_size, self.max_len), np.int32)
      for row, e in enumerate(elements[first:first + self.batch_size]):
        ids = _ids(e[self.input_key])
        tokens[row, :len(ids)] = ids
      batches.append({'tokens': tokens, 'mask': tokens > 0})
    return elements, iter(batches)

  def decode_text(self, ids) -> str:
    ids = list(np.asarray(ids))
    if self.end_id in ids:
      ids = ids[:ids.index(self.end_id)]
    return ' '.join(WORDS[i] for i in ids if i not in (0, self.start_id))

  def feature_text(self, value: str) -> str:
    return value


def test_scores_are_sacrebleus_corpus_bleu_and_chrf():
  outputs = ['it is one times two', 'it is zero', 'one two', '']
  references = ['it is one times two', 'it is zero times one', 'two one',
                'it is three']
  got = seq2seq_eval.scores(outputs, references)
  assert got == {
      'bleu': sacrebleu.corpus_bleu(outputs, [references]).score,
      'chrf': sacrebleu.corpus_chrf(outputs, [references]).score}
  assert 0 < got['bleu'] < 100 and 0 < got['chrf'] < 100
  perfect = seq2seq_eval.scores(references, references)
  np.testing.assert_allclose([perfect['bleu'], perfect['chrf']], 100.0)


def _pairs(targets):
  return [{'de': 'null', 'en': target} for target in targets]


def test_most_frequent_target_is_the_counters_with_ties_to_the_first_seen(
    monkeypatch):
  targets = ['it is one', 'it is zero', 'it is zero', 'it is one', 'two',
             'two', 'two']
  datasets = _Datasets(train=_pairs(targets), test=[])
  want = collections.Counter(targets).most_common(1)[0][0]
  assert seq2seq_eval.most_frequent_target(datasets) == (want, 7) == (
      'two', 7)
  # Counted over BASELINE_EXAMPLES examples at most: a tie, the first wins.
  monkeypatch.setattr(seq2seq_eval, 'BASELINE_EXAMPLES', 4)
  assert seq2seq_eval.most_frequent_target(datasets) == ('it is one', 4)


@pytest.fixture(scope='module')
def seq2seq():
  cfg = ModelConfig(vocab_size=len(WORDS), head='seq2seq', family='simmim',
                    decoder_family='simmim', d_model=16, num_heads=2,
                    num_layers=1, decoder_layers=1, mlp_dim=32, max_len=8,
                    target_len=6, segment_len=4)
  model = simmim_jax.Seq2Seq(cfg)
  # A key whose greedy outputs differ by row, some cut short by end_id.
  params = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 8), jnp.int32),
                               jnp.zeros((1, 6), jnp.int32))['params']
  return model, params


TEST = [{'de': 'null', 'en': 'it is zero'},
        {'de': 'eins mal zwei', 'en': 'it is one times two'},
        {'de': 'zwei', 'en': 'two'},
        {'de': 'eins', 'en': 'one'},
        {'de': 'zwei mal eins', 'en': 'it is two times one'},
        {'de': 'null null', 'en': 'zero zero'}]


def _generated(model, params, datasets, elements):
  """Greedy outputs by calling decoding.generate on the same batches."""
  _, batches = datasets.first_examples('test', len(elements))
  texts = []
  for batch in batches:
    out = decoding.generate(
        model, params, np.full((4, 1), datasets.start_id, np.int32),
        max_new_tokens=5, eos_id=datasets.end_id, source=batch['tokens'],
        source_mask=batch['mask'])
    texts += [datasets.decode_text(row) for row in np.asarray(out)]
  return texts[:len(elements)]


@pytest.mark.parametrize('limit', [0, 5])
def test_greedy_outputs_are_generates_decoded(seq2seq, limit):
  model, params = seq2seq
  datasets = _Datasets(train=[], test=TEST)
  elements, outputs = seq2seq_eval.greedy_outputs(model, params, datasets,
                                                  'test', limit)
  assert elements == (TEST[:limit] if limit else TEST)
  assert outputs == _generated(model, params, datasets, elements)
  assert len(set(outputs)) > 2, outputs


def test_report_scores_outputs_and_the_baseline_and_writes_samples(
    seq2seq, tmp_path):
  model, params = seq2seq
  datasets = _Datasets(train=_pairs(['one', 'it is zero', 'it is zero']),
                       test=TEST)
  outputs = _generated(model, params, datasets, TEST)
  refs = [e['en'] for e in TEST]
  report = seq2seq_eval.test_report(model, params, datasets, 'test', 0,
                                    str(tmp_path), num_samples=4)
  assert report == {
      'test_bleu': sacrebleu.corpus_bleu(outputs, [refs]).score,
      'test_chrf': sacrebleu.corpus_chrf(outputs, [refs]).score,
      'baseline': {
          'test_bleu': sacrebleu.corpus_bleu(['it is zero'] * 6,
                                             [refs]).score,
          'test_chrf': sacrebleu.corpus_chrf(['it is zero'] * 6,
                                             [refs]).score,
          'target': 'it is zero', 'train_examples_counted': 3}}
  samples = open(tmp_path / seq2seq_eval.SAMPLES_FILE,
                 encoding='utf-8').read()
  assert samples == ''.join(
      f'=== test example {i}\n--- source\n{e["de"]}\n--- reference\n'
      f'{e["en"]}\n--- output\n{outputs[i]}\n\n'
      for i, e in enumerate(TEST[:4]))
  # No workdir (a process other than the first): nothing written.
  os.remove(tmp_path / seq2seq_eval.SAMPLES_FILE)
  assert seq2seq_eval.test_report(model, params, datasets, 'test', 0,
                                  None) == report
  assert not os.listdir(tmp_path)
