"""`byte_lm`: a byte-level LM corpus from the Python standard library sources.

Every Python install has its standard library's `.py` files, so this corpus
builds offline anywhere. Files are split into train/validation/test by a
stable hash of their path relative to the stdlib root (~98/1/1), so no file
contributes to two splits, and each file's bytes are cut into chunks of
`chunk_len` bytes (the last chunk of a file may be shorter). The contents
depend on the Python version, which is recorded in the dataset metadata.
"""

import dataclasses
import hashlib
import os
import platform
import sysconfig
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from simmim_jax import checks

SPLITS = ('train', 'validation', 'test')
# Directories skipped under the stdlib root: installed packages and caches,
# and CPython's own test suites (deliberately malformed files, huge data).
SKIPPED_DIRS = frozenset(
    {'site-packages', 'dist-packages', '__pycache__', 'test', 'tests',
     'idle_test'})


def stdlib_root() -> str:
  return sysconfig.get_paths()['stdlib']


def split_of(relative_path: str) -> str:
  """Split of a file: a stable hash of its relative path, ~98/1/1."""
  digest = hashlib.sha256(relative_path.encode()).digest()
  bucket = int.from_bytes(digest[:4], 'little') % 100
  return 'test' if bucket == 0 else 'validation' if bucket == 1 else 'train'


def stdlib_files(root: Optional[str] = None) -> list[str]:
  """Relative paths ('/'-separated) of the stdlib's .py files, sorted."""
  root = stdlib_root() if root is None else root
  if not os.path.isdir(root):
    raise checks.MissingPathError(
        f'standard library directory {root} not found')
  paths = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS]
    for name in files:
      if name.endswith('.py'):
        path = os.path.relpath(os.path.join(directory, name), root)
        paths.append(path.replace(os.sep, '/'))
  return sorted(paths)


def select_files(paths: list[str], split: str,
                 max_bytes: Optional[int], root: str) -> list[str]:
  """The files of `split`, in a hash order, up to `max_bytes` in total."""
  chosen = [p for p in paths if split_of(p) == split]
  if max_bytes is None:
    return chosen
  # Hash order rather than name order so a capped split samples the whole
  # library instead of the first packages alphabetically.
  chosen.sort(key=lambda p: hashlib.sha256(p.encode()).digest())
  kept, total = [], 0
  for path in chosen:
    size = os.path.getsize(os.path.join(root, path))
    if total + size > max_bytes and kept:
      continue
    kept.append(path)
    total += size
  return sorted(kept)


def chunks(data: bytes, chunk_len: int) -> Iterator[tuple[int, bytes]]:
  """(offset, bytes) pieces of `data`, each `chunk_len` long but the last."""
  for offset in range(0, len(data), chunk_len):
    yield offset, data[offset:offset + chunk_len]


@dataclasses.dataclass(eq=False)
class ByteLmConfig(tfds.core.BuilderConfig):
  """Chunk length and optional byte caps per split (None = every file)."""
  chunk_len: int = 2048
  max_bytes: Optional[tuple[int, int, int]] = None


class ByteLm(tfds.core.GeneratorBasedBuilder):
  """Byte-level LM text: chunks of the standard library's Python sources."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stdlib .py files, split by file.'}
  BUILDER_CONFIGS = [
      ByteLmConfig(name='full', description='Every stdlib .py file outside '
                   'test directories and site-packages (~12 MB on 3.11).'),
      ByteLmConfig(name='small', max_bytes=(2_000_000, 200_000, 200_000),
                   description='At most 2 MB / 200 kB / 200 kB of files '
                   'per split; builds in seconds.'),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    # Array-record files are read back without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    python = platform.python_version()
    return self.dataset_info_from_configs(
        description=f'{__doc__}\nBuilt from Python {python}.',
        features=tfds.features.FeaturesDict({
            # Raw bytes: a chunk boundary may cut a UTF-8 character.
            'text': tfds.features.Text(),
            'path': tfds.features.Text(),
            'offset': tfds.features.Scalar(dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(
            python_version=python,
            python_implementation=platform.python_implementation()),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    root = stdlib_root()
    paths = stdlib_files(root)
    caps = self.builder_config.max_bytes or (None,) * len(SPLITS)
    return {split: self._generate_examples(
        root, select_files(paths, split, cap, root))
            for split, cap in zip(SPLITS, caps)}

  def _generate_examples(self, root, paths):
    chunk_len = self.builder_config.chunk_len
    for path in paths:
      with open(os.path.join(root, path), 'rb') as f:
        data = f.read()
      for offset, piece in chunks(data, chunk_len):
        yield f'{path}:{offset}', {'text': piece, 'path': path,
                                   'offset': offset}
