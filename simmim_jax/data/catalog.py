"""The datasets `create_datasets` knows by name, and what their examples hold.

Each local dataset is a TFDS builder generated here or read from files the
user has; `spec` says how its examples become model inputs. Any other TFDS
dataset (data.name='tfds') is described by the data config's keys.
"""

import dataclasses
from typing import Any, Optional, Union

import ml_collections
import tensorflow_datasets as tfds

from simmim_jax.checks import ConfigError
from simmim_jax.data import byte_corpus
from simmim_jax.data import docstrings
from simmim_jax.data import listops
from simmim_jax.data import lra_image
from simmim_jax.data import lra_retrieval
from simmim_jax.data import mqar
from simmim_jax.data import pathfinder

BYTE_VOCAB_SIZE = 257  # byte b -> id b + 1
# seq2seq targets: start token, target ids, end token; both after the ids.
TARGET_SPECIAL_TOKENS = 2
LOCAL_BUILDERS = {'lra_listops': listops.LraListops,
                  'byte_lm': byte_corpus.ByteLm,
                  'stdlib_docstrings': docstrings.StdlibDocstrings,
                  'mqar': mqar.Mqar,
                  'lra_image': lra_image.LraImage,
                  'lra_retrieval': lra_retrieval.LraRetrieval,
                  'lra_pathfinder': pathfinder.LraPathfinder}
PIXEL_VOCAB_SIZE = 257  # 8-bit pixel v -> id v + 1 (so black is not padding)
NAMES = (*LOCAL_BUILDERS, 'tfds')
RECALL_DATASETS = ('mqar',)  # task 'recall': metrics name query_*
ENCODINGS = ('bytes', 'ids')
TASKS = ('classification', 'dual', 'lm', 'seq2seq', 'recall')


@dataclasses.dataclass
class Spec:
  """What one dataset's examples hold and how they become tokens.

  Tasks: 'classification' (input_key -> label_key), 'dual' (two inputs ->
  label), 'lm' (next token of input_key), 'seq2seq' (input_key ->
  target_key) and 'recall' (a causal LM scored where target_key, a sequence
  as long as the input, is >= 0: MQAR).
  """
  task: str
  vocab_size: int           # including pad id 0 (and seq2seq's specials)
  num_classes: int          # 0 unless classification or dual
  encoding: str             # 'listops' | 'bytes' | 'ids'
  input_key: str
  other_input_key: Optional[str] = None
  label_key: Optional[str] = None
  target_key: Optional[str] = None

  @property
  def start_id(self) -> Optional[int]:
    """seq2seq: the token every target starts with (end_id ends it)."""
    if self.task != 'seq2seq':
      return None
    return self.vocab_size - TARGET_SPECIAL_TOKENS

  @property
  def end_id(self) -> Optional[int]:
    return self.vocab_size - 1 if self.task == 'seq2seq' else None


def builder_config_names(name: str) -> tuple[str, ...]:
  """The listed configs of a local dataset."""
  return tuple(c.name for c in LOCAL_BUILDERS[name].BUILDER_CONFIGS)


def builder_config(name: str, config_name: str
                   ) -> Union[str, tfds.core.BuilderConfig]:
  """What `tfds.builder(name, config=...)` takes for data.builder_config.

  MQAR builds any setting its name describes; the others only their listed
  configs. Raises ConfigError for a name that does not fit.
  """
  if name == 'mqar':
    return mqar.parse_config(config_name)
  if config_name not in builder_config_names(name):
    raise ConfigError(
        f'data.builder_config must be one of {builder_config_names(name)} '
        f'for {name}, got {config_name!r}')
  return config_name


def local_builder(name: str, config_name: str, data_dir: Optional[str]
                  ) -> tfds.core.DatasetBuilder:
  """The builder of local dataset `name` with config `config_name`."""
  return LOCAL_BUILDERS[name](config=builder_config(name, config_name),
                              data_dir=data_dir)


def spec(cfg: ml_collections.ConfigDict, info: tfds.core.DatasetInfo
         ) -> Spec:
  """The Spec of the dataset the data config names."""
  if cfg.name == 'lra_listops':
    return Spec('classification', listops.VOCAB_SIZE, listops.NUM_CLASSES,
                'listops', 'source', label_key='target')
  if cfg.name == 'byte_lm':
    return Spec('lm', BYTE_VOCAB_SIZE, 0, 'bytes', 'text')
  if cfg.name == 'stdlib_docstrings':
    return Spec('seq2seq', BYTE_VOCAB_SIZE + TARGET_SPECIAL_TOKENS, 0,
                'bytes', 'source', target_key='target')
  if cfg.name == 'lra_pathfinder':
    return Spec('classification', PIXEL_VOCAB_SIZE, 2, 'ids', 'image',
                label_key='label')
  if cfg.name == 'lra_image':
    return Spec('classification', PIXEL_VOCAB_SIZE,
                len(lra_image.CLASS_NAMES), 'ids', 'image', label_key='label')
  if cfg.name == 'lra_retrieval':
    return Spec('dual', BYTE_VOCAB_SIZE, 2, 'bytes', 'text1', 'text2',
                'label')
  if cfg.name == 'mqar':
    vocab = mqar.parse_config(info.config_name).vocab_size
    return Spec('recall', vocab + 1, 0, 'ids', 'tokens', target_key='targets')
  return _tfds_spec(cfg, info.features)


def _tfds_spec(cfg: ml_collections.ConfigDict, features: Any) -> Spec:
  """Any TFDS dataset, described by the data config's keys."""
  for field in ('input_key', 'other_input_key', 'label_key', 'target_key'):
    key = cfg[field]
    if key is not None and key not in features:
      raise ConfigError(f'data.{field}={key!r} is not a feature of '
                        f'{cfg.dataset}; features: {sorted(features.keys())}')
  num_classes = 0
  if cfg.label_key is not None:
    num_classes = cfg.num_classes or getattr(
        features[cfg.label_key], 'num_classes', 0)
    if not num_classes:
      raise ConfigError(f'data.num_classes must be set: feature '
                        f'{cfg.label_key!r} is not a ClassLabel')
  task = ('seq2seq' if cfg.target_key is not None else
          'lm' if cfg.label_key is None else
          'classification' if cfg.other_input_key is None else 'dual')
  if task == 'lm' and cfg.other_input_key is not None:
    raise ConfigError('data.other_input_key needs a data.label_key (dual task)')
  vocab = BYTE_VOCAB_SIZE if cfg.encoding == 'bytes' else cfg.vocab_size + 1
  if task == 'seq2seq':
    vocab += TARGET_SPECIAL_TOKENS
  return Spec(task, vocab, num_classes, cfg.encoding, cfg.input_key,
              cfg.other_input_key, cfg.label_key, cfg.target_key)
