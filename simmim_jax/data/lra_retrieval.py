"""LRA Retrieval: ACL Anthology Network paper pairs, builder `lra_retrieval`.

Data: LRA's release (lra_release.gz from
https://github.com/google-research/long-range-arena, directory
lra_release/tsv_data/): new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv and
new_aan_pairs.test.tsv, read from manual_dir. Each line is one pair of papers,
five tab-separated fields without a header: label (1: the papers are linked
by a citation, 0: not; written as a number such as `1` or `1.0`), id1, id2,
text1, text2.

What LRA did (lra_benchmarks/matching/input_pipeline.py): read each file with
`tf.data.experimental.make_csv_dataset(field_delim='\\t',
use_quote_delim=False, header=False)`, the label as a float32 cast to int32,
the four other fields as raw strings: quotes are ordinary characters and no
escape is undone (the release's texts appear to be Python bytes literals,
`b'...'`, which LRA's model read character by character, and so do we).
Its byte encoder (tokenizer 'char') encodes each text's bytes and keeps the
first `max_length` = 4,000, one token per byte; the two texts are encoded
separately (a dual encoder). Splits: train, validation (the eval file), test.

Here each line is split on tabs by hand (the csv module would read quotes),
the label must be 0 or 1, and `text1`/`text2` keep the first 4,000 bytes
(`max_bytes`) of the field. A cut that falls inside a multi-byte UTF-8
character drops that character's first bytes, so the text stays valid UTF-8
(LRA's encoder would have kept them: up to 3 bytes at the end differ); a text
that is not UTF-8 is an error naming its file and line.
"""

import dataclasses
from typing import Any, Iterator

import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax.data import manual_files

SPLITS = ('train', 'validation', 'test')
RELEASE_FILES = {'train': 'new_aan_pairs.train.tsv',
                 'validation': 'new_aan_pairs.eval.tsv',
                 'test': 'new_aan_pairs.test.tsv'}
FIELDS = ('label', 'id1', 'id2', 'text1', 'text2')
MAX_BYTES = 4000  # LRA's max_length for the Retrieval task


def truncate_utf8(data: bytes, max_bytes: int) -> str:
  """The longest prefix of `data` of at most `max_bytes` bytes that ends on
  a character boundary, decoded. Raises UnicodeDecodeError if that prefix is
  not UTF-8."""
  head = data[:max_bytes]
  try:
    return head.decode('utf-8')
  except UnicodeDecodeError as e:
    # Only a character cut short by the truncation itself is dropped.
    if len(data) > max_bytes and e.reason == 'unexpected end of data' \
        and e.end == len(head):
      return head[:e.start].decode('utf-8')
    raise


def parse_label(field: bytes) -> int:
  """0 or 1 from the release's label field (`0`, `1`, `0.0`, `1.0`...)."""
  try:
    value = float(field)
  except ValueError:
    value = None
  if value not in (0.0, 1.0):
    raise ValueError(f'label must be 0 or 1, got {field!r}')
  return int(value)


def parse_line(line: bytes, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
  """One release line (without its newline) -> the builder's features."""
  fields = line.split(b'\t')
  if len(fields) != len(FIELDS):
    raise ValueError(f'expected {len(FIELDS)} tab-separated fields '
                     f'({", ".join(FIELDS)}), got {len(fields)}')
  example = {'label': parse_label(fields[0])}
  for name, field in zip(FIELDS[1:], fields[1:]):
    limit = max_bytes if name.startswith('text') else len(field)
    try:
      example[name] = truncate_utf8(field, limit)
    except UnicodeDecodeError as e:
      raise ValueError(f'{name} is not UTF-8 (byte {e.start}: '
                       f'{field[e.start:e.start + 4]!r})') from None
  return example


def iter_release(path, max_bytes: int = MAX_BYTES
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, example) of each non-blank line of a release TSV."""
  with open(path, 'rb') as f:
    for number, line in enumerate(f, start=1):
      # A \r before the \n (Windows line ends) is not part of text2.
      line = line.rstrip(b'\n')
      if line.endswith(b'\r'):
        line = line[:-1]
      if not line.strip():
        continue
      try:
        yield number, parse_line(line, max_bytes)
      except ValueError as e:
        raise ValueError(f'{path}:{number}: {e}') from None


@dataclasses.dataclass(eq=False)
class LraRetrievalConfig(tfds.core.BuilderConfig):
  """`max_bytes`: bytes kept of each text (LRA: 4,000)."""
  max_bytes: int = MAX_BYTES


class LraRetrieval(tfds.core.GeneratorBasedBuilder):
  """AAN document matching from LRA's released TSV files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "Import of LRA's new_aan_pairs TSV files."}
  BUILDER_CONFIGS = [
      LraRetrievalConfig(name='aan', description=(
          "LRA's Retrieval task: AAN pairs, texts cut to 4,000 bytes.")),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put LRA\'s new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv and '
      'new_aan_pairs.test.tsv (from lra_release/tsv_data/ of LRA\'s '
      'lra_release.gz) in manual_dir (the data config\'s `manual_dir`; '
      'default <data_dir>/downloads/manual).')

  def __init__(self, *, file_format=None, **kwargs):
    # Array-record files are read back without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text1': tfds.features.Text(),
            'text2': tfds.features.Text(),
            'label': tfds.features.ClassLabel(num_classes=2),
            'id1': tfds.features.Text(),
            'id2': tfds.features.Text(),
        }),
        homepage='https://github.com/google-research/long-range-arena',
    )

  def _split_generators(self, dl_manager):
    paths = manual_files.release_paths(
        dl_manager, 'lra_retrieval/aan', "LRA's AAN files", RELEASE_FILES,
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    checks.integer(self.builder_config.max_bytes, 'max_bytes')
    return {s: self._generate_examples(paths[s]) for s in SPLITS}

  def _generate_examples(self, path):
    yield from iter_release(path, self.builder_config.max_bytes)
