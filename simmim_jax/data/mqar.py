"""Multi-query associative recall (MQAR): a seeded generator and `mqar`.

As Zoology (Arora et al. 2023, `zoology/data/multiquery_ar.py`) defines it:
`num_kv_pairs` key-value pairs open the sequence (keys from the first half
of the vocabulary, values from the second, each drawn without replacement
per example); each key is queried once more in the rest of the sequence, at
an even offset `2 * gap` into it, where the gaps are drawn without
replacement with p(gap = i - 1) proportional to i^(power_a - 1); every other
position holds a filler token drawn uniformly from the whole vocabulary.
`targets[t]` is the value of the key at position t where t is a query, and
-1 elsewhere; a causal LM is scored at the query positions only.

power_a = 0.01 (Zoology's default) puts most queries right after the pairs;
power_a = 1 spreads them uniformly over the sequence, so that a key and its
query are usually many segments apart.

Config names say the setting: `L{seq_len}_kv{num_kv_pairs}` with optional
`_v{vocab_size}` (default 8192), `_a{power_a}` (default 0.01, written e.g.
`a1` or `a0.01`) and `_n{train examples}` (default 100,000; validation and
test have 3,000 each), e.g. `mqar/L512_kv16_v256_a1`. Any such name builds;
`BUILDER_CONFIGS` lists the ones experiments/configs/mqar.py uses.
"""

import dataclasses
import hashlib
import re

import numpy as np
import tensorflow_datasets as tfds

from simmim_jax.checks import ConfigError

SPLITS = ('train', 'validation', 'test')
EVAL_EXAMPLES = 3_000
DEFAULT_VOCAB = 8192
DEFAULT_POWER_A = 0.01
DEFAULT_TRAIN_EXAMPLES = 100_000
_CHUNK = 1024  # examples drawn at once: bounds the [chunk, vocab] draws
_NAME = re.compile(r'L(\d+)_kv(\d+)(?:_v(\d+))?(?:_a(\d+(?:\.\d+)?))?'
                   r'(?:_n(\d+))?$')


def check_setting(seq_len: int, num_kv_pairs: int, vocab_size: int,
                  power_a: float) -> None:
  """Raises ConfigError unless the pairs and their queries fit."""
  if num_kv_pairs < 1 or 4 * num_kv_pairs > seq_len:
    raise ConfigError(f'mqar: num_kv_pairs must be in [1, seq_len / 4] (the '
                      f'pairs and one query slot per key), got {num_kv_pairs}'
                      f' for seq_len {seq_len}')
  if seq_len % 2:
    raise ConfigError(f'mqar: seq_len must be even, got {seq_len}')
  if vocab_size // 2 - 1 < num_kv_pairs:
    raise ConfigError(f'mqar: vocab_size {vocab_size} has fewer than '
                      f'{num_kv_pairs} keys (keys are 1 .. vocab_size/2 - 1)')
  if not power_a > 0:
    raise ConfigError(f'mqar: power_a must be > 0, got {power_a}')


def _distinct(rng: np.random.Generator, rows: int, low: int, high: int,
              count: int) -> np.ndarray:
  """[rows, count] ints from [low, high), distinct within each row."""
  return np.argsort(rng.random((rows, high - low)), axis=1)[:, :count] + low


def generate_mqar(num_examples: int, *, seq_len: int, num_kv_pairs: int,
                  vocab_size: int = DEFAULT_VOCAB,
                  power_a: float = DEFAULT_POWER_A, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, targets), each int32 [num_examples, seq_len]; see the module
  docstring. Tokens are in [0, vocab_size); targets are values or -1. The
  same arguments give the same arrays."""
  check_setting(seq_len, num_kv_pairs, vocab_size, power_a)
  rng = np.random.default_rng(seed)
  context = 2 * num_kv_pairs
  space = (seq_len - context) // 2
  log_p = (power_a - 1) * np.log(np.arange(1, space + 1))
  tokens = np.empty((num_examples, seq_len), np.int32)
  targets = np.full((num_examples, seq_len), -1, np.int32)
  half = vocab_size // 2
  for start in range(0, num_examples, _CHUNK):
    rows = min(_CHUNK, num_examples - start)
    keys = _distinct(rng, rows, 1, half, num_kv_pairs)
    values = _distinct(rng, rows, half, vocab_size, num_kv_pairs)
    # The top-k of log p + Gumbel noise is a draw of k gaps without
    # replacement, each next one with probability proportional to p.
    noisy = log_p + rng.gumbel(size=(rows, space))
    gaps = np.argsort(-noisy, axis=1)[:, :num_kv_pairs]
    out = rng.integers(0, vocab_size, (rows, seq_len), dtype=np.int32)
    out[:, 0:context:2], out[:, 1:context:2] = keys, values
    query_at = context + 2 * gaps
    np.put_along_axis(out, query_at, keys, axis=1)
    chunk_targets = targets[start:start + rows]
    np.put_along_axis(chunk_targets, query_at, values, axis=1)
    tokens[start:start + rows] = out
  return tokens, targets


def query_key_positions(tokens: np.ndarray, targets: np.ndarray,
                        num_kv_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """(query positions, their keys' positions), flat over the examples of
  tokens, targets [examples, seq_len] as generate_mqar returns them."""
  rows, queries = np.nonzero(targets >= 0)
  keys = tokens[rows, :2 * num_kv_pairs:2] == tokens[rows, queries][:, None]
  return queries, 2 * np.argmax(keys, axis=1)


def same_segment_share(tokens: np.ndarray, targets: np.ndarray,
                       num_kv_pairs: int, segment_len: int) -> float:
  """The share of queries in their key's segment: what attention inside
  segments alone can answer."""
  queries, keys = query_key_positions(tokens, targets, num_kv_pairs)
  return float(np.mean(queries // segment_len == keys // segment_len))


def split_seed(seed: int, split: str) -> int:
  """A seed of its own per split, derived from the builder seed."""
  digest = hashlib.sha256(f'mqar/{seed}/{split}'.encode()).digest()
  return int.from_bytes(digest[:8], 'little')


@dataclasses.dataclass(eq=False)
class MqarConfig(tfds.core.BuilderConfig):
  """One MQAR setting; `num_examples` is train/validation/test."""
  seq_len: int = 64
  num_kv_pairs: int = 4
  vocab_size: int = DEFAULT_VOCAB
  power_a: float = DEFAULT_POWER_A
  num_examples: tuple[int, int, int] = (DEFAULT_TRAIN_EXAMPLES, EVAL_EXAMPLES,
                                        EVAL_EXAMPLES)
  seed: int = 0


def config_name(seq_len: int, num_kv_pairs: int, vocab_size: int =
                DEFAULT_VOCAB, power_a: float = DEFAULT_POWER_A,
                train_examples: int = DEFAULT_TRAIN_EXAMPLES) -> str:
  """The config name of a setting (defaults left out)."""
  name = f'L{seq_len}_kv{num_kv_pairs}'
  if vocab_size != DEFAULT_VOCAB:
    name += f'_v{vocab_size}'
  if power_a != DEFAULT_POWER_A:
    name += f'_a{power_a:g}'
  if train_examples != DEFAULT_TRAIN_EXAMPLES:
    name += f'_n{train_examples}'
  return name


def parse_config(name: str) -> MqarConfig:
  """The MqarConfig a name describes (the listed object if it is listed)."""
  listed = {c.name: c for c in Mqar.BUILDER_CONFIGS}
  if name in listed:
    return listed[name]
  match = _NAME.match(name)
  if not match:
    raise ConfigError(
        f'mqar config {name!r} does not read as L<seq_len>_kv<pairs>'
        f'[_v<vocab>][_a<power_a>][_n<train examples>], e.g. L512_kv16_v256_a1')
  seq_len, pairs, vocab, power, train = match.groups()
  vocab = int(vocab) if vocab else DEFAULT_VOCAB
  power = float(power) if power else DEFAULT_POWER_A
  train = int(train) if train else DEFAULT_TRAIN_EXAMPLES
  check_setting(int(seq_len), int(pairs), vocab, power)
  if train < 1:
    raise ConfigError(f'mqar config {name!r}: needs >= 1 training example')
  return make_config(int(seq_len), int(pairs), vocab, power, train)


def make_config(seq_len: int, num_kv_pairs: int,
                vocab_size: int = DEFAULT_VOCAB,
                power_a: float = DEFAULT_POWER_A,
                train_examples: int = DEFAULT_TRAIN_EXAMPLES) -> MqarConfig:
  """The MqarConfig of a setting, named by `config_name`."""
  return MqarConfig(
      name=config_name(seq_len, num_kv_pairs, vocab_size, power_a,
                       train_examples),
      seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
      power_a=power_a,
      num_examples=(train_examples, EVAL_EXAMPLES, EVAL_EXAMPLES),
      description=f'{num_kv_pairs} pairs in {seq_len} tokens, vocabulary '
                  f'{vocab_size}, power_a {power_a:g}, {train_examples} '
                  'training examples.')


class Mqar(tfds.core.GeneratorBasedBuilder):
  """MQAR, generated locally and seeded (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "Zoology's multi-query associative recall."}
  BUILDER_CONFIGS = [
      make_config(64, 4, 64, train_examples=20_000),  # tests, smoke runs
      make_config(128, 8, 256),                  # experiments/configs/mqar.py
      make_config(128, 8, 256, 1.0),
      make_config(256, 16, 256, 1.0),
      make_config(512, 16, 256, 1.0),
      make_config(512, 64),                      # Zoology's sizes
      make_config(2048, 128),
      make_config(8192, 256, train_examples=20_000),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    # Array-record files are read back without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    length = self.builder_config.seq_len
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'tokens': tfds.features.Tensor(shape=(length,), dtype=np.int32),
            'targets': tfds.features.Tensor(shape=(length,), dtype=np.int32),
        }),
        homepage='https://github.com/HazyResearch/zoology',
        disable_shuffling=True,  # already random; record i = example i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    config = self.builder_config
    tokens, targets = generate_mqar(
        config.num_examples[SPLITS.index(split)], seq_len=config.seq_len,
        num_kv_pairs=config.num_kv_pairs, vocab_size=config.vocab_size,
        power_a=config.power_a, seed=split_seed(config.seed, split))
    for i in range(len(tokens)):
      yield i, {'tokens': tokens[i], 'targets': targets[i]}
