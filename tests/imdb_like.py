"""Test-only TFDS builder `imdb_like`: imdb_reviews' features, tiny and local.

`plain_text` has imdb_reviews' spec (`text`: Text, `label`: ClassLabel(2));
`pairs` adds a second text (dual-input tasks) and an integer sequence `ids`.
Text i is unique and its label is i % 2, so tests can check every example.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = {'train': 64, 'test': 21}


def text(split: str, i: int) -> str:
  # Varied lengths and a non-ASCII character, to exercise utf-8 bytes.
  return f'{split} review {i}: ' + 'très bien ' * (i % 7) + 'fin.'


def ids(i: int) -> np.ndarray:
  return (np.arange(3 + i % 5, dtype=np.int32) * 7 + i) % 50


class ImdbLike(tfds.core.GeneratorBasedBuilder):
  """Tiny synthetic stand-in for imdb_reviews."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='plain_text'),
                     tfds.core.BuilderConfig(name='pairs')]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {'text': tfds.features.Text(),
                'label': tfds.features.ClassLabel(names=['neg', 'pos'])}
    if self.builder_config.name == 'pairs':
      features['other_text'] = tfds.features.Text()
      features['ids'] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in NUM_EXAMPLES}

  def _generate_examples(self, split):
    pairs = self.builder_config.name == 'pairs'
    for i in range(NUM_EXAMPLES[split]):
      example = {'text': text(split, i), 'label': i % 2}
      if pairs:
        example['other_text'] = text(split, i)[::-1]
        example['ids'] = ids(i)
      yield i, example
