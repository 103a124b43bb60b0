"""Test-only TFDS builder `translation_like`: wmt14_translate's shape, tiny.

`de_en` has wmt14_translate/de-en's spec (a Translation feature with 'de'
and 'en' texts). Sentence i says the number i in German and in English; a
few English targets repeat, so a most-frequent-target baseline is defined.
"""

import tensorflow_datasets as tfds

NUM_EXAMPLES = {'train': 48, 'validation': 8, 'test': 24}
GERMAN = ['null', 'eins', 'zwei', 'drei', 'vier', 'fünf', 'sechs', 'sieben']
ENGLISH = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven']


def pair(i: int) -> tuple[str, str]:
  """(German, English) of example i; 'it is zero.' (every fifth i) is the
  most frequent English target."""
  if i % 5 == 0:
    return 'es ist null.', 'it is zero.'
  return (f'es ist {GERMAN[i % 8]} mal {GERMAN[i // 8 % 8]}.',
          f'it is {ENGLISH[i % 8]} times {ENGLISH[i // 8 % 8]}.')


class TranslationLike(tfds.core.GeneratorBasedBuilder):
  """Tiny synthetic stand-in for wmt14_translate/de-en."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='de_en')]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.Translation(languages=['de', 'en']))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in NUM_EXAMPLES}

  def _generate_examples(self, split):
    offset = {'train': 0, 'validation': 100, 'test': 200}[split]
    for i in range(NUM_EXAMPLES[split]):
      german, english = pair(offset + i)
      yield i, {'de': german, 'en': english}
