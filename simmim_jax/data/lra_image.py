"""LRA Image: CIFAR-10 as 1,024 grayscale pixel tokens, the `lra_image` builder.

Data: CIFAR-10's python release (https://www.cs.toronto.edu/~kriz/cifar.html),
read from manual_dir as `cifar-10-python.tar.gz` (read in place, nothing is
extracted) or as its extracted folder `cifar-10-batches-py/`. Each batch file
(data_batch_1..5, test_batch) is a pickled dict: b'data' uint8 [10000, 3072],
one image a row as its R, G and B planes of 32x32 row-major pixels, and
b'labels', 10,000 ints in [0, 10).

What LRA did (lra_benchmarks/image/input_pipeline.py, get_cifar10_datasets):
TFDS `cifar10` with splits train[:90%] (training), train[90%:] (validation)
and test, each image mapped through `tf.image.rgb_to_grayscale` and cast to
int32; the model reads the [32, 32] values row-major as 1,024 tokens of a
256-symbol vocabulary, unnormalized. Here `image` is that uint8 [32, 32].

Grayscale: `lra_grayscale` is TensorFlow's op redone in numpy, step by step:
`convert_image_dtype` to float32 multiplies each channel by float32(1 / 255);
the weights 0.2989, 0.5870, 0.1140 (as float32) weight R, G and B, summed in
float32; `convert_image_dtype` back to uint8 multiplies by 255.5 and casts,
which truncates: gray = trunc(255.5 * (0.2989 R + 0.5870 G + 0.1140 B) / 255).
The float32 steps matter: for 237 of the 2**24 RGB triples, whose exact value
lies less than 4e-5 below an integer, float32 rounds up to that integer (as
TF does; e.g. (0, 122, 186) gives 93, exact arithmetic 92.99999). Which
triples those are depends on the order of the sum: we add R, G, B terms left
to right, each rounded; a kernel that fuses multiply-adds differs on 31.

Splits: `test` is the 10,000 images of test_batch; `train` and `validation`
are 45,000 and 5,000 (90% and 10%, rounded as TFDS rounds `train[:90%]`) of
the 50,000 training images, cut in one of two orders (the config's
`split_order`):
- 'tfds' (config `cifar10`): LRA's own cut. TFDS writes a split's examples
  sorted by md5(split name + str(key)) (tensorflow_datasets.core.hashing,
  kept stable by TFDS since changing it would reorder every dataset), and its
  cifar10 builder keys each training image by its index in data_batch_1..5;
  so train[:90%] is the indices that come first in that order. TFDS reads the
  binary release, which holds the same images in the same order as these
  python files.
- 'release': the order of the release files, data_batch_1..5: the first
  45,000 images train, the last 5,000 validate.
Examples are keyed by their index in the release, so `train` and `test` are
even stored in the order of TFDS cifar10's train[:90%] and test.
"""

import dataclasses
import hashlib
import pickle
import tarfile
from typing import Any, BinaryIO, Iterator

import numpy as np
import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax.data import manual_files

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
SPLITS = ('train', 'validation', 'test')
SPLIT_ORDERS = ('tfds', 'release')
TARBALL = 'cifar-10-python.tar.gz'
FOLDER = 'cifar-10-batches-py'
TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCH = 'test_batch'
SIZE = 32
TRAIN_PERCENT = 90
# tf.image.rgb_to_grayscale's weights (ITU-R BT.601 luma), as float32.
RGB_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def lra_grayscale(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] RGB -> uint8 [...], as `tf.image.rgb_to_grayscale`."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim < 1 or rgb.shape[-1] != 3:
    raise ValueError(f'lra_grayscale needs uint8 [..., 3] RGB, got '
                     f'{rgb.dtype} {rgb.shape}')
  scaled = rgb.astype(np.float32) * np.float32(1 / 255)
  gray = (scaled[..., 0] * RGB_WEIGHTS[0] + scaled[..., 1] * RGB_WEIGHTS[1]
          + scaled[..., 2] * RGB_WEIGHTS[2])
  # float32 -> uint8 as convert_image_dtype: scale by 255.5, cast (truncate).
  return (gray * np.float32(255.5)).astype(np.uint8)


def num_train(num_examples: int) -> int:
  """Size of TFDS's `train[:90%]` of `num_examples` (its closest rounding)."""
  return int(round(TRAIN_PERCENT * num_examples / 100.0))


def tfds_order(num_examples: int, split: str = 'train') -> list[int]:
  """Indices 0..num_examples-1 in the order TFDS stores a split keyed by
  them: sorted by the md5 of the split name followed by the key's digits."""
  salted = hashlib.md5(split.encode())

  def rank(index: int) -> int:
    md5 = salted.copy()
    md5.update(str(index).encode())
    return int(md5.hexdigest(), 16)

  return sorted(range(num_examples), key=rank)


def split_indices(num_examples: int, split_order: str
                  ) -> tuple[list[int], list[int]]:
  """(train, validation) indices into the release's training images."""
  if split_order not in SPLIT_ORDERS:
    raise ValueError(f'split_order must be one of {SPLIT_ORDERS}, got '
                     f'{split_order!r}')
  order = (tfds_order(num_examples) if split_order == 'tfds'
           else list(range(num_examples)))
  cut = num_train(num_examples)
  return order[:cut], order[cut:]


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only what CIFAR's batches hold (dicts, lists, numbers, bytes,
  numpy arrays): unpickling anything else could run arbitrary code."""

  _ALLOWED = frozenset({
      ('numpy', 'ndarray'), ('numpy', 'dtype'),
      ('numpy.core.multiarray', '_reconstruct'),  # numpy 1 (the release)
      ('numpy._core.multiarray', '_reconstruct'),  # numpy 2
      ('numpy.core.numeric', '_frombuffer'),  # protocol 5 arrays
      ('numpy._core.numeric', '_frombuffer'),
      ('_codecs', 'encode'),  # bytes in a protocol 2 pickle from Python 3
  })

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}')


def _read_batch(f: BinaryIO, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(gray uint8 [n, 32, 32], labels int64 [n]) of one batch file."""
  try:
    # encoding='bytes': the release was pickled by Python 2.
    batch = _ArrayUnpickler(f, encoding='bytes').load()
  except Exception as e:  # whatever fails to load is not a CIFAR batch
    raise ValueError(f'{where}: not a CIFAR-10 python batch ({e})') from None
  if not isinstance(batch, dict) or b'data' not in batch \
      or b'labels' not in batch:
    raise ValueError(f"{where}: expected a dict with b'data' and b'labels'")
  data, labels = batch[b'data'], batch[b'labels']
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
      or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
    shape = getattr(data, 'shape', None)
    raise ValueError(f"{where}: b'data' must be uint8 [n, 3072], got "
                     f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
  labels = np.asarray(labels)
  if labels.shape != (len(data),) or not np.issubdtype(labels.dtype,
                                                       np.integer):
    raise ValueError(f"{where}: b'labels' must be {len(data)} integers, got "
                     f"{labels.dtype} {labels.shape}")
  bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
  if bad.size:
    raise ValueError(f'{where}: record {bad[0]} has label {labels[bad[0]]}, '
                     f'not in [0, {len(CLASS_NAMES)})')
  # Rows are R, G, B planes of 32x32: to [n, 32, 32, 3] for the RGB weights.
  rgb = data.reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1)
  return lra_grayscale(rgb), labels.astype(np.int64)


def _read_folder(folder, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  missing = [str(folder / n) for n in names if not (folder / n).is_file()]
  if missing:
    raise checks.MissingPathError(
        f'lra_image: missing {", ".join(missing)}. '
        + LraImage.MANUAL_DOWNLOAD_INSTRUCTIONS)
  batches = {}
  for name in names:
    with (folder / name).open('rb') as f:
      batches[name] = _read_batch(f, str(folder / name))
  return batches


def _read_tarball(path, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  batches = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      # One pass in archive order: a gzip stream seeks by decompressing.
      for member in tar:
        name = member.name.rsplit('/', 1)[-1]
        if member.isfile() and name in names and name not in batches:
          with tar.extractfile(member) as f:
            batches[name] = _read_batch(f, f'{path}:{member.name}')
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(f'{path}: not a readable .tar.gz ({e})') from None
  missing = [n for n in names if n not in batches]
  if missing:
    raise checks.MissingPathError(
        f'lra_image: {path} holds no {", ".join(missing)} (expected '
        f'{FOLDER}/<name> inside). ' + LraImage.MANUAL_DOWNLOAD_INSTRUCTIONS)
  return batches


def read_release(manual_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Batch name -> (gray images, labels) of all six batches in manual_dir:
  the extracted folder if there is one, else the tarball."""
  names = TRAIN_BATCHES + (TEST_BATCH,)
  folder, tarball = manual_dir / FOLDER, manual_dir / TARBALL
  if folder.is_dir():
    return _read_folder(folder, names)
  if tarball.is_file():
    return _read_tarball(tarball, names)
  raise checks.MissingPathError(
      f'lra_image: neither {tarball} nor {folder}/ exists. '
      + LraImage.MANUAL_DOWNLOAD_INSTRUCTIONS)


@dataclasses.dataclass(eq=False)
class LraImageConfig(tfds.core.BuilderConfig):
  """`split_order`: 'tfds' (LRA's train/validation cut) or 'release' (the
  files' order); see the module docstring."""
  split_order: str = 'tfds'


class LraImage(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 in LRA's grayscale and splits, from the python release."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "LRA's grayscale and 90/10 cut of CIFAR-10."}
  BUILDER_CONFIGS = [
      LraImageConfig(name='cifar10', description=(
          "LRA's Image task: grayscale CIFAR-10, train/validation = TFDS "
          "cifar10's train[:90%] / train[90%:], test = the test batch.")),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put CIFAR-10\'s python release, {TARBALL} (from '
      'https://www.cs.toronto.edu/~kriz/cifar.html), or its extracted '
      f'folder {FOLDER}/ (data_batch_1..5, test_batch) in manual_dir (the '
      'data config\'s `manual_dir`; default <data_dir>/downloads/manual).')

  def __init__(self, *, file_format=None, **kwargs):
    # Array-record files are read back without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/google-research/long-range-arena',
    )

  def _split_generators(self, dl_manager):
    batches = read_release(manual_files.manual_dir(
        dl_manager, 'lra_image', "CIFAR-10's python release"))
    train_images = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    train_labels = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    train, validation = split_indices(len(train_images),
                                      self.builder_config.split_order)
    test_images, test_labels = batches[TEST_BATCH]
    return {
        'train': self._generate_examples(train_images, train_labels, train),
        'validation': self._generate_examples(train_images, train_labels,
                                              validation),
        'test': self._generate_examples(test_images, test_labels,
                                        range(len(test_images))),
    }

  def _generate_examples(self, images, labels, indices
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
