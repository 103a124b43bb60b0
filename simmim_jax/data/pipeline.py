"""Input pipelines: TFDS array-record datasets -> padded numpy batches.

`create_datasets(config, ...)` reads the local datasets of catalog.py
(ListOps, MQAR, ...) or any TFDS dataset prepared in array-record format (no
TensorFlow needed) and returns an infinite, seeded, per-process grain loader
for training plus finite padded passes for evaluation. Token id 0 is
padding; real ids are >= 1.
"""

import contextlib
import dataclasses
import fcntl
import os
from typing import Any, Iterator, Optional

from absl import logging
import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax.checks import ConfigError
from simmim_jax.data import catalog
from simmim_jax.data import listops
from simmim_jax.data.catalog import Spec
from simmim_jax.data.data_config import validate_data_config


class _Encode(grain.transforms.Map):
  """TFDS example -> `tokens`, `mask`[, `other_*`][, `label`][, `targets`,
  `target_mask`], `weight`."""

  def __init__(self, spec: Spec, max_len: int, target_max_len: int = 0):
    self.spec = spec
    self.max_len = max_len
    self.target_max_len = target_max_len

  def ids(self, value: Any) -> np.ndarray:
    """Token ids int32 of one feature value, all >= 1."""
    spec = self.spec
    if spec.encoding == 'listops':
      ids = listops.encode_listops(_text(value, spec.input_key))
    elif spec.encoding == 'bytes':
      if isinstance(value, str):
        value = value.encode('utf-8')
      if not isinstance(value, bytes):
        raise ValueError(f'encoding "bytes" needs text features, got '
                         f'{type(value).__name__}')
      ids = np.frombuffer(value, np.uint8).astype(np.int32) + 1
    else:
      values = np.asarray(value)
      if values.ndim < 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f'encoding "ids" needs integer arrays, got '
                         f'dtype {values.dtype} shape {values.shape}')
      values = values.reshape(-1)  # an image's pixels row by row
      low, high = (values.min(), values.max()) if values.size else (0, 0)
      if low < 0 or high >= spec.vocab_size - 1:
        bad = low if low < 0 else high
        raise ValueError(f'id {bad} outside [0, vocab_size='
                         f'{spec.vocab_size - 1}) of the data config')
      ids = values.astype(np.int32) + 1
    return ids

  def padded(self, value: Any) -> tuple[np.ndarray, np.ndarray]:
    return _pad(self.ids(value), self.max_len)  # LRA truncates inputs too

  def padded_target(self, value: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([[self.spec.start_id], self.ids(value),
                          [self.spec.end_id]]).astype(np.int32)
    return _pad(ids, self.target_max_len)

  def position_targets(self, value: Any) -> np.ndarray:
    """recall: the id to predict at each input position, 0 = not scored
    (the data's -1; pad id 0 is never a target)."""
    values = np.asarray(value).astype(np.int32)[:self.max_len]
    targets = np.zeros(self.max_len, np.int32)
    targets[:len(values)] = np.where(values >= 0, values + 1, 0)
    if targets.max(initial=0) >= self.spec.vocab_size:
      raise ValueError(f'target id {targets.max() - 1} outside [0, '
                       f'vocab_size={self.spec.vocab_size - 1})')
    return targets

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    spec = self.spec
    out = {}
    out['tokens'], out['mask'] = self.padded(element[spec.input_key])
    if spec.other_input_key is not None:
      out['other_tokens'], out['other_mask'] = self.padded(
          element[spec.other_input_key])
    if spec.label_key is not None:
      label = int(element[spec.label_key])
      if not 0 <= label < spec.num_classes:
        raise ValueError(f'label {label} outside [0, num_classes='
                         f'{spec.num_classes})')
      out['label'] = np.int32(label)
    if spec.task == 'seq2seq':
      out['targets'], out['target_mask'] = self.padded_target(
          element[spec.target_key])
    if spec.task == 'recall':
      out['targets'] = self.position_targets(element[spec.target_key])
    out['weight'] = np.float32(1.0)
    return out


def _pad(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids cut or zero-padded to `length`, mask of the real ones)."""
  ids = ids[:length]
  tokens = np.zeros(length, np.int32)
  tokens[:len(ids)] = ids
  return tokens, np.arange(length) < len(ids)


def _text(value: Any, key: str) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, str):
    return value
  raise ValueError(f'feature {key!r} must be text, got {type(value).__name__}')


@dataclasses.dataclass
class Datasets:
  """Training loader and evaluation passes of one dataset, for this process.

  Batches are dicts of numpy arrays with B = global batch // process_count:
  `tokens` int32 [B, max_len] (0 = pad), `mask` bool [B, max_len] (True =
  real token), `weight` float32 [B] (0 = padding example) and, by task,
  `label` int32 [B] (classification, dual), `other_tokens`, `other_mask`
  (dual), `targets` int32 [B, target_max_len], `target_mask` (seq2seq:
  start_id, the target's ids, end_id), and `targets` int32 [B, max_len]
  (recall: the id to predict at each position, 0 where none is scored).
  """
  task: str
  vocab_size: int
  num_classes: int
  train: grain.DataLoader
  eval_splits: tuple[str, ...]
  start_id: Optional[int] = None  # seq2seq's target start and end tokens
  end_id: Optional[int] = None
  encoding: str = 'bytes'         # how decode_text reads ids back
  input_key: str = ''             # feature names of the raw examples
  target_key: Optional[str] = None
  _train_source: Any = dataclasses.field(default=None, repr=False)
  _eval_sources: dict[str, Any] = dataclasses.field(default_factory=dict,
                                                    repr=False)
  _encode: Optional[_Encode] = dataclasses.field(default=None, repr=False)
  _pad: dict[str, np.ndarray] = dataclasses.field(default_factory=dict,
                                                  repr=False)
  _eval_batch_size: int = 0
  _process_index: int = 0
  _process_count: int = 1

  def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's contiguous shard of `split`, in order.

    Every process yields the same number of batches of the same shape; the
    last one is filled with all-pad examples of weight 0.
    """
    if split not in self._eval_sources:
      raise ValueError(f'eval split {split!r} is not one of eval_splits '
                       f'{self.eval_splits}')
    source = self._eval_sources[split]
    per_process = -(-len(source) // self._process_count)
    start = min(self._process_index * per_process, len(source))
    stop = min(start + per_process, len(source))
    size = self._eval_batch_size
    for first in range(0, per_process, size):
      indices = range(start + first, min(start + first + size, stop))
      yield self._batch([source[i] for i in indices], size)

  def _batch(self, elements, size) -> dict[str, np.ndarray]:
    examples = [self._encode.map(e) for e in elements]
    examples += [self._pad] * (size - len(examples))
    return {k: np.stack([e[k] for e in examples]) for k in self._pad}

  @property
  def train_source(self):
    """The training split's raw examples (random access)."""
    return self._train_source

  def most_frequent_input_token(self, limit: int = 10_000) -> int:
    """The most frequent token id of the first `limit` training inputs
    (both inputs of a dual task; padding not counted), ties to the
    smaller id: the masked objective's baseline prediction."""
    counts = np.zeros(self.vocab_size + 1, np.int64)
    for i in range(min(limit, len(self._train_source))):
      example = self._encode.map(self._train_source[i])
      for key in ('tokens', 'other_tokens'):
        if key in example:
          counts += np.bincount(example[key], minlength=len(counts))
    counts[0] = 0
    return int(np.argmax(counts))

  def _source(self, split: str):
    if split == 'train':
      return self._train_source
    if split not in self._eval_sources:
      raise ValueError(f'split {split!r} is not one of eval_splits '
                       f'{self.eval_splits}')
    return self._eval_sources[split]

  def first_examples(self, split: str, limit: int = 0) -> tuple[
      list[dict[str, Any]], Iterator[dict[str, np.ndarray]]]:
    """The first `limit` raw examples of `split` (0: all) and their padded
    batches of eval_batch_size * process_count rows, in order and the same
    on every process (for generation, which each process runs whole)."""
    source = self._source(split)
    count = len(source) if not limit else min(limit, len(source))
    elements = [source[i] for i in range(count)]
    size = self._eval_batch_size * self._process_count
    batches = (self._batch(elements[first:first + size], size)
               for first in range(0, count, size))
    return elements, batches

  def decode_text(self, ids: np.ndarray) -> str:
    """Token ids (pad, start and end ids dropped; cut at the first end id)
    -> text: utf-8 of the bytes, or ids (data value = id - 1) joined by
    spaces."""
    ids = np.asarray(ids)
    if self.end_id is not None and np.any(ids == self.end_id):
      ids = ids[:np.argmax(ids == self.end_id)]
    ids = ids[(ids > 0) & (ids != self.start_id)] - 1
    if self.encoding == 'bytes':
      return bytes(ids.astype(np.uint8).tolist()).decode('utf-8', 'replace')
    return ' '.join(str(i) for i in ids.tolist())

  def feature_text(self, value: Any) -> str:
    """A target feature's value as the text `decode_text` would give."""
    return self.decode_text(self._encode.ids(value))


@contextlib.contextmanager
def _quiet_absl():
  """absl logs only errors inside the block."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _builder(cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared builder; built first when allowed, else a clear error."""
  local = cfg.name in catalog.LOCAL_BUILDERS
  name = f'{cfg.name}/{cfg.builder_config}' if local else cfg.dataset
  try:
    builder = (catalog.local_builder(cfg.name, cfg.builder_config,
                                     cfg.data_dir)
               if local else tfds.builder(name, data_dir=cfg.data_dir))
  except tfds.core.registered.DatasetNotFoundError:
    raise checks.MissingPathError(
        f'TFDS dataset {name!r} is not registered (import the module defining '
        f'its builder) and not found in data_dir {cfg.data_dir!r} (None = the '
        'TFDS default)') from None
  with _quiet_absl():  # its "no dataset_info.json" is our error below
    if builder.is_prepared():
      return builder
  if local and cfg.prepare:
    # Processes started together (a sweep's points) build it once: the
    # others wait for the lock, then find it prepared.
    os.makedirs(builder.data_dir_root, exist_ok=True)
    lock_path = os.path.join(builder.data_dir_root,
                             f'.{name.replace("/", "_")}.lock')
    with open(lock_path, 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = catalog.local_builder(cfg.name, cfg.builder_config,
                                      cfg.data_dir)
      if not builder.is_prepared():
        builder.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(
                manual_dir=cfg.manual_dir))
    return builder
  if local:
    command = (f"python -c \"from simmim_jax.data import catalog; "
               f"catalog.local_builder('{cfg.name}', '{cfg.builder_config}', "
               f"'{builder.data_dir_root}').download_and_prepare()\"")
    hint = f'set data.prepare=True or build it with: {command}'
  else:
    hint = (f'prepare it where it can be downloaded, e.g. `tfds build {name} '
            f'--file_format=array_record`, and copy it to '
            f'{builder.data_dir_root}')
  raise checks.MissingPathError(
      f'dataset {name} is not prepared in {builder.data_dir}; {hint}')


def _split_name(split: str, field: str, info: tfds.core.DatasetInfo) -> str:
  base = split.split('[')[0] if isinstance(split, str) else None
  if base not in info.splits:
    raise ConfigError(f'{field}={split!r} is not a split of {info.full_name}; '
                      f'splits: {sorted(info.splits.keys())}')
  return split


def create_datasets(config: ml_collections.ConfigDict, *,
                    global_batch_size: int, eval_batch_size: int, seed: int,
                    process_index: Optional[int] = None,
                    process_count: Optional[int] = None) -> Datasets:
  """Train loader and eval passes of the dataset `config` names.

  Args:
    config: the experiment's `data` sub-config (data_config.py).
    global_batch_size: training examples per step over all processes.
    eval_batch_size: evaluation examples per batch over all processes.
    seed: shuffling seed in [0, 2**32); same seed, same batches.
    process_index, process_count: this host's shard; default from jax.

  Returns:
    `Datasets` whose batches hold global_batch_size // process_count examples.
  """
  cfg = validate_data_config(config)
  if process_index is None or process_count is None:
    import jax  # only when the caller did not say which process this is
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  process_count = checks.integer(process_count, 'process_count')
  process_index = checks.integer(process_index, 'process_index', minimum=0)
  if process_index >= process_count:
    raise ValueError(f'process_index {process_index} must be < process_count '
                     f'{process_count}')
  local_batch = {}
  for name, size in (('global_batch_size', global_batch_size),
                     ('eval_batch_size', eval_batch_size)):
    checks.integer(size, name)
    if size % process_count:
      raise ValueError(f'{name} ({size}) must be divisible by process_count '
                       f'({process_count})')
    local_batch[name] = size // process_count
  seed = checks.integer(seed, 'seed', minimum=0)
  if seed >= 2**32:
    raise ValueError(f'seed must be < 2**32 (grain), got {seed}')

  builder = _builder(cfg)
  spec = catalog.spec(cfg, builder.info)
  train_split = _split_name(cfg.train_split, 'data.train_split', builder.info)
  eval_splits = tuple(_split_name(s, 'data.eval_splits', builder.info)
                      for s in cfg.eval_splits)
  sources = builder.as_data_source(split=[train_split, *eval_splits])
  train_source, eval_sources = sources[0], dict(zip(eval_splits, sources[1:]))
  encode = _Encode(spec, cfg.max_len, cfg.target_max_len)
  if len(train_source) < process_count:
    raise ValueError(f'split {train_split} has {len(train_source)} examples, '
                     f'fewer than the {process_count} processes')
  # Wrong features fail here rather than in training; a padding example is
  # all zeros: pad tokens, mask False, weight 0.
  pad = {k: np.zeros_like(v) for k, v in encode.map(train_source[0]).items()}

  sampler = grain.samplers.IndexSampler(
      num_records=len(train_source),
      shard_options=grain.sharding.ShardOptions(
          shard_index=process_index, shard_count=process_count,
          drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  train = grain.DataLoader(
      data_source=train_source, sampler=sampler,
      operations=[encode, grain.transforms.Batch(
          local_batch['global_batch_size'], drop_remainder=True)],
      worker_count=cfg.worker_count,
      read_options=grain.ReadOptions(num_threads=cfg.read_threads))
  return Datasets(
      task=spec.task, vocab_size=spec.vocab_size,
      num_classes=spec.num_classes, train=train, eval_splits=eval_splits,
      start_id=spec.start_id, end_id=spec.end_id,
      encoding='ids' if spec.encoding == 'ids' else 'bytes',
      input_key=spec.input_key, target_key=spec.target_key,
      _train_source=train_source, _eval_sources=eval_sources,
      _encode=encode, _pad=pad,
      _eval_batch_size=local_batch['eval_batch_size'],
      _process_index=process_index, _process_count=process_count)
