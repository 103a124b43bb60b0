"""MQAR: the generator against an independent parser, the builder's batches
and the recall metrics."""

import jax.numpy as jnp
import numpy as np
import pytest

from simmim_jax import data
from simmim_jax.checks import ConfigError
from simmim_jax.data import mqar
from simmim_jax.training import steps


def parse_recall(tokens, num_kv_pairs):
  """{query position: value} read off the tokens alone: the pairs open the
  sequence, and a query is a key at an even offset after them. Where a
  filler repeats a key, every candidate is returned (the caller checks that
  the scored positions are among them)."""
  keys = tokens[0:2 * num_kv_pairs:2].tolist()
  values = tokens[1:2 * num_kv_pairs:2].tolist()
  value_of = dict(zip(keys, values))
  assert len(value_of) == num_kv_pairs  # keys are distinct
  return {t: value_of[int(tokens[t])]
          for t in range(2 * num_kv_pairs, len(tokens), 2)
          if int(tokens[t]) in value_of}


@pytest.mark.parametrize('seq_len,pairs,vocab,power', [
    (64, 4, 64, 0.01), (128, 16, 256, 1.0), (256, 64, 8192, 0.5)])
def test_every_target_is_recovered_by_an_independent_parser(
    seq_len, pairs, vocab, power):
  tokens, targets = data.generate_mqar(300, seq_len=seq_len,
                                       num_kv_pairs=pairs, vocab_size=vocab,
                                       power_a=power, seed=1)
  assert tokens.shape == targets.shape == (300, seq_len)
  assert tokens.min() >= 0 and tokens.max() < vocab
  for row, target in zip(tokens, targets):
    keys, values = row[0:2 * pairs:2], row[1:2 * pairs:2]
    assert np.all((keys >= 1) & (keys < vocab // 2))
    assert np.all((values >= vocab // 2) & (values < vocab))
    assert len(set(values.tolist())) == pairs
    scored = np.flatnonzero(target >= 0)
    assert len(scored) == pairs  # each key queried exactly once
    assert sorted(row[scored].tolist()) == sorted(keys.tolist())
    candidates = parse_recall(row, pairs)
    for t in scored:
      assert candidates[t] == target[t]
    assert np.all(target[target < 0] == -1)


def test_power_a_moves_the_queries():
  def share_in_first_quarter(power):
    _, targets = data.generate_mqar(400, seq_len=256, num_kv_pairs=8,
                                    vocab_size=256, power_a=power, seed=0)
    offsets = (np.nonzero(targets >= 0)[1] - 16) / (256 - 16)
    return np.mean(offsets < 0.25)
  assert share_in_first_quarter(0.01) > 0.6  # Zoology's default: near
  assert abs(share_in_first_quarter(1.0) - 0.25) < 0.03  # uniform


def test_generation_is_seeded():
  def draw(seed):
    return data.generate_mqar(50, seq_len=64, num_kv_pairs=4, vocab_size=64,
                              seed=seed)
  assert all(np.array_equal(a, b) for a, b in zip(draw(3), draw(3)))
  assert not np.array_equal(draw(3)[0], draw(4)[0])


@pytest.mark.parametrize('name,match', [
    ('L64_kv17', r'num_kv_pairs must be in \[1, seq_len / 4\]'),
    ('L65_kv4', 'seq_len must be even'),
    ('L64_kv4_v8', 'has fewer than 4 keys'),
    ('64_4', 'does not read as'),
])
def test_bad_settings_are_clear_errors(name, match):
  with pytest.raises(ConfigError, match=match):
    mqar.parse_config(name)


def test_names_round_trip():
  config = mqar.parse_config('L128_kv8_v256_a1')
  assert (config.seq_len, config.num_kv_pairs, config.vocab_size,
          config.power_a) == (128, 8, 256, 1.0)
  assert config is mqar.parse_config(config.name)  # a listed config
  assert mqar.parse_config('L64_kv4_n10').num_examples == (10, 3000, 3000)


def test_batches_hold_the_targets_as_ids(tmp_path):
  cfg = data.default_data_config()
  cfg.update(name='mqar', builder_config='L64_kv4_v64_n64', max_len=64,
             data_dir=str(tmp_path), eval_splits=('test',))
  datasets = data.create_datasets(cfg, global_batch_size=8,
                                  eval_batch_size=8, seed=0)
  assert (datasets.task, datasets.vocab_size) == ('recall', 65)
  batch = next(datasets.eval_batches('test'))
  tokens, targets = data.generate_mqar(
      3000, seq_len=64, num_kv_pairs=4, vocab_size=64,
      seed=mqar.split_seed(0, 'test'))
  np.testing.assert_array_equal(batch['tokens'], tokens[:8] + 1)
  np.testing.assert_array_equal(batch['targets'],
                                np.where(targets[:8] >= 0, targets[:8] + 1, 0))


def test_recall_metrics_count_only_the_queries():
  targets = jnp.array([[0, 5, 0, 7], [3, 0, 0, 0]])
  batch = {'tokens': jnp.ones((2, 4), jnp.int32),
           'mask': jnp.ones((2, 4), bool), 'weight': jnp.ones(2),
           'targets': targets}
  # Right at (0, 1) and (1, 0), wrong at (0, 3); other positions ignored.
  predicted = jnp.array([[1, 5, 1, 1], [3, 1, 1, 1]])
  logits = 10.0 * jnp.eye(8)[predicted]
  sums = steps.metric_sums(logits, batch, 'recall')
  assert float(sums['count']) == 3 and float(sums['correct_sum']) == 2
  summary = steps.summarize(sums, 'recall')
  assert summary['query_accuracy'] == pytest.approx(2 / 3)
  assert set(summary) == {'query_loss', 'query_accuracy'}


def test_same_segment_share_counts_queries_by_their_keys_segment():
  tokens, targets = data.generate_mqar(200, seq_len=64, num_kv_pairs=4,
                                       vocab_size=64, seed=0)
  same = total = 0
  for row, target in zip(tokens, targets):
    for t in np.flatnonzero(target >= 0):
      key_at = int(np.flatnonzero(row[:8:2] == row[t])[0]) * 2
      same += key_at // 16 == t // 16
      total += 1
  assert mqar.same_segment_share(tokens, targets, 4, 16) == same / total
  assert mqar.same_segment_share(tokens, targets, 4, 64) == 1.0
