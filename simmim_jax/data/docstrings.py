"""`stdlib_docstrings`: summarise a Python function in its docstring's words.

Input: a function's source with its docstring removed; target: the first
sentence of that docstring. Real text from the running Python's standard
library, so it builds offline anywhere. Modules (files) are split into
train/validation/test (~90/5/5) by a hash of the seed and the module's path,
so no module is in two splits and another seed gives other splits.
"""

import ast
import dataclasses
import hashlib
import os
import platform
import re
import textwrap
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from simmim_jax.data import byte_corpus

SPLITS = ('train', 'validation', 'test')
# A lower-case word after the stop means an abbreviation ('e.g. a list').
_SENTENCE_END = re.compile(r'[.!?](?=\s+[^\sa-z]|\s*$)')


def split_of(module_path: str, seed: int) -> str:
  """Split of a module: a hash of the seed and its relative path."""
  digest = hashlib.sha256(f'{seed}/{module_path}'.encode()).digest()
  bucket = int.from_bytes(digest[:4], 'little') % 100
  return 'test' if bucket < 5 else 'validation' if bucket < 10 else 'train'


def first_sentence(docstring: str) -> str:
  """The docstring's first sentence, on one line ('' if it has none).

  The first paragraph, whitespace collapsed, up to the first '.', '!' or
  '?' that ends a word and is not followed by a lower-case word; a
  paragraph without one is taken whole.
  """
  paragraph = docstring.strip().split('\n\n')[0]
  text = ' '.join(paragraph.split())
  end = _SENTENCE_END.search(text)
  return text[:end.end()] if end else text


def function_examples(text: str) -> Iterator[tuple[int, str, str, str]]:
  """(line, name, source without docstring, first sentence) per function.

  Functions (and methods) whose docstring is their only statement, shares
  a line with code, or has no first sentence are skipped.
  """
  tree = ast.parse(text)
  lines = text.splitlines(keepends=True)
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    docstring = ast.get_docstring(node)
    if not docstring or len(node.body) < 2:
      continue
    doc = node.body[0]
    target = first_sentence(docstring)
    doc_first, doc_last = doc.lineno - 1, doc.end_lineno - 1
    if (not target or doc_first <= node.lineno - 1
        # (ast offsets count UTF-8 bytes)
        or lines[doc_first].encode()[:doc.col_offset].strip()
        or lines[doc_last].encode()[doc.end_col_offset:].strip()):
      continue
    kept = lines[node.lineno - 1:doc_first] + lines[doc_last + 1:
                                                    node.end_lineno]
    yield node.lineno, node.name, textwrap.dedent(''.join(kept)), target


def module_examples(root: str, path: str) -> list[tuple[int, str, str, str]]:
  """`function_examples` of one file; [] if it does not parse."""
  with open(os.path.join(root, path), 'rb') as f:
    data = f.read()
  try:
    return list(function_examples(data.decode('utf-8')))
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return []


@dataclasses.dataclass(eq=False)
class DocstringsConfig(tfds.core.BuilderConfig):
  """Seed of the module split; optional example caps per split (whole
  modules are kept, in a hash order, until a cap is reached)."""
  seed: int = 0
  max_examples: Optional[tuple[int, int, int]] = None


class StdlibDocstrings(tfds.core.GeneratorBasedBuilder):
  """Function source (docstring removed) -> its docstring's first sentence."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stdlib functions, split by module.'}
  BUILDER_CONFIGS = [
      DocstringsConfig(name='full', description='Every function of every '
                       'stdlib module outside test directories.'),
      DocstringsConfig(name='small', max_examples=(4000, 400, 400),
                       description='About 4000 / 400 / 400 functions; builds '
                       'in seconds.'),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    # Array-record files are read back without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    python = platform.python_version()
    return self.dataset_info_from_configs(
        description=f'{__doc__}\nBuilt from Python {python}.',
        features=tfds.features.FeaturesDict({
            'source': tfds.features.Text(),
            'target': tfds.features.Text(),
            'module': tfds.features.Text(),
            'name': tfds.features.Text(),
            'line': tfds.features.Scalar(dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(
            python_version=python, seed=self.builder_config.seed),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    root = byte_corpus.stdlib_root()
    paths = byte_corpus.stdlib_files(root)
    caps = self.builder_config.max_examples or (None,) * len(SPLITS)
    return {split: self._generate_examples(root, paths, split, cap)
            for split, cap in zip(SPLITS, caps)}

  def _generate_examples(self, root, paths, split, cap):
    seed = self.builder_config.seed
    chosen = [p for p in paths if split_of(p, seed) == split]
    if cap is not None:  # a hash order samples the whole library
      chosen.sort(key=lambda p: hashlib.sha256(f'{seed}/{p}'.encode())
                  .digest())
    count = 0
    for path in chosen:
      if cap is not None and count >= cap:
        break
      for line, name, source, target in module_examples(root, path):
        count += 1
        yield f'{path}:{line}', {'source': source, 'target': target,
                                 'module': path, 'name': name, 'line': line}
