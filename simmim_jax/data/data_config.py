"""The experiment's `data` sub-config: its fields, their defaults, and the
check that turns a user's overrides into a complete, valid config.
"""

from typing import Any

import ml_collections

from simmim_jax import checks
from simmim_jax.checks import ConfigError
from simmim_jax.data import catalog


def _optional_str():
  """None by default, yet overridable with --config.data.<field>=<str>."""
  return ml_collections.config_dict.placeholder(str)


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` sub-config with every field at its default."""
  return ml_collections.ConfigDict({
      'name': 'lra_listops',      # a name of catalog.NAMES, e.g.
                                  # 'lra_listops', 'mqar', 'tfds'
      'builder_config': 'tiny',   # lra_listops: tiny|small|standard|lra_release
                                  # byte_lm, stdlib_docstrings: small|full
                                  # mqar: e.g. L128_kv8_v256 (mqar.py)
      'data_dir': _optional_str(),    # TFDS data dir; None = TFDS default
      'manual_dir': _optional_str(),  # lra_release TSVs (None: TFDS default,
                                      # <data_dir>/downloads/manual)
      'prepare': True,            # build lra_listops / byte_lm when absent
      'max_len': 128,             # pad / truncate every input to this
      'target_max_len': 128,      # seq2seq: pad / truncate targets (with
                                  # their start and end tokens) to this
      'train_split': 'train',
      'eval_splits': ('validation', 'test'),
      'worker_count': 0,          # grain worker processes (0: in this one);
                                  # batch order depends on it, and >0 needs
                                  # absl flags parsed (absl.app.run)
      'read_threads': 4,          # grain threads reading records
      # name='tfds' only: any dataset already prepared in array-record format.
      'dataset': '',              # e.g. 'imdb_reviews/plain_text:1.0.0'
      'input_key': 'text',        # feature with the (first) input sequence
      'other_input_key': _optional_str(),    # second input: task 'dual'
      'label_key': 'label',       # None: task 'lm' (or 'seq2seq')
      'target_key': _optional_str(),         # set: task 'seq2seq', input ->
                                  # this feature (set label_key=None)
      'num_classes': 0,           # 0: from the label's ClassLabel feature
      'encoding': 'bytes',        # 'bytes': text as utf-8; 'ids': int arrays
                                  # (an image row by row)
      'vocab_size': 0,            # 'ids': values in [0, vocab_size), id = v + 1
  })


def validate_data_config(config: Any) -> ml_collections.ConfigDict:
  """`config` over the defaults; unknown fields and bad values raise."""
  defaults = default_data_config()
  unknown = sorted(set(config.keys()) - set(defaults.keys()))
  if unknown:
    raise ConfigError(f'unknown data config field(s) {unknown}; known fields: '
                      f'{sorted(defaults.keys())}')
  # A fresh dict, not `defaults.update`: ConfigDict's type locking would turn
  # a bad value into a TypeError that does not say which field is wrong.
  cfg = ml_collections.ConfigDict(
      {**defaults.to_dict(), **{k: config[k] for k in config.keys()}})
  if cfg.name not in catalog.NAMES:
    raise ConfigError(
        f'data.name must be one of {catalog.NAMES}, got {cfg.name!r}')
  checks.integer(cfg.max_len, 'data.max_len')
  checks.integer(cfg.target_max_len, 'data.target_max_len')
  checks.integer(cfg.worker_count, 'data.worker_count', minimum=0)
  checks.integer(cfg.read_threads, 'data.read_threads')
  if not isinstance(cfg.prepare, bool):
    raise ConfigError(f'data.prepare must be a bool, got {cfg.prepare!r}')
  if isinstance(cfg.eval_splits, str):
    raise ConfigError(f'data.eval_splits must be a sequence of split names, '
                      f'got the string {cfg.eval_splits!r}')
  if cfg.name == 'tfds':
    if not cfg.dataset or not isinstance(cfg.dataset, str):
      raise ConfigError('data.dataset must name a TFDS dataset when '
                        f'data.name is "tfds", got {cfg.dataset!r}')
    if cfg.encoding not in catalog.ENCODINGS:
      raise ConfigError(f'data.encoding must be one of {catalog.ENCODINGS}, '
                        f'got {cfg.encoding!r}')
    if cfg.encoding == 'ids':
      checks.integer(cfg.vocab_size, 'data.vocab_size')
    checks.integer(cfg.num_classes, 'data.num_classes', minimum=0)
    if cfg.target_key is not None and (cfg.label_key is not None
                                       or cfg.other_input_key is not None):
      raise ConfigError('data.target_key (seq2seq) needs data.label_key=None '
                        'and data.other_input_key=None')
    if cfg.target_key is not None and cfg.target_max_len < 2:
      raise ConfigError(f'data.target_max_len must hold the start and end '
                        f'tokens (>= 2), got {cfg.target_max_len}')
  else:
    catalog.builder_config(cfg.name, cfg.builder_config)
  return cfg
