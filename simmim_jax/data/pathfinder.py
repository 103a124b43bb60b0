"""LRA Pathfinder / Path-X: the `lra_pathfinder` builder, drawn offline.

Images come from the seeded generator in pathfinder_draw.py (after
drewlinsley/pathfinder's snakes2.py, which LRA used; its docstring lists
where it differs). Configs `pf{32,64,128}_{easy,intermediate,hard}` have
LRA's sizes (160,000 / 20,000 / 20,000 train / validation / test) and
settings, pf128 being Path-X; `pf32_easy_small` and `pf32_hard_small` have
20,000 / 2,000 / 2,000 and `pf32_hard_tiny` 512 / 128 / 128 (tests).

Features: `image` uint8 [r, r] (8-bit grayscale), `label` (1: the markers
are on the two ends of one contour), `markers` float32 [2, 2], `contours`
float32 [2, contour_length, 2, 2] (each target's dashes as (start, end),
from marker 0's end on) and `distractors` float32 [num_dashes, 2, 2]. Points
are (row, col) in pixels of the image, row 0 at the top; pixel (i, j)
covers [i, i+1) x [j, j+1). Marker 0 is at contours[0, 0, 0], marker 1 at
contours[1 - label, -1, 1].

Each split is drawn in chunks of CHUNK_SIZE images, chunk c from a
generator seeded by (split seed, c), in a pool of processes: the pixels do
not depend on how many processes draw them. A config always builds the
same data and the splits draw from different seeds. The seeds depend on
the config's seed, resolution and difficulty, not its size: pf32_hard_tiny's
test images are the first 128 drawn for pf32_hard_small's and pf32_hard's
(TFDS shuffles the order it stores). Of each pair of images drawn, (0, 1),
(2, 3), ..., one is of each class.

Speed on a shared 2-core machine (Python 3.11, numpy 2.4; load average
about 2.3 while measuring), images per second in 1 / 2 processes:
pf32 hard 87 / 144, pf32 easy 290 / -, pf128 hard 36 / 62, pf64 hard
13.5 / - (the hardest to fit: see pathfinder_draw.py). Measured with

  python -c "
  import time; from simmim_jax.data import pathfinder as p
  s = p.PathfinderSettings.for_resolution(32, 'hard'); t = time.time()
  n = sum(1 for _ in p.draw_split(s, 2048, seed=0, num_workers=2))
  print(n / (time.time() - t))"

(1 process: 1,024 images, num_workers=1; pf128: 128 / 256 images). So
`tfds.builder('lra_pathfinder/pf32_hard_small').download_and_prepare()`
(24,000 images) takes about 3 minutes (170 s; 280 s while other jobs kept
the load near 6), pf32_hard's 200,000 about 25 minutes and pf128_hard's
about an hour.
"""

import dataclasses
import hashlib
import multiprocessing
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax.data.pathfinder_draw import CHUNK_SIZE
from simmim_jax.data.pathfinder_draw import DIFFICULTIES
from simmim_jax.data.pathfinder_draw import RESOLUTIONS
from simmim_jax.data.pathfinder_draw import PathfinderExample
from simmim_jax.data.pathfinder_draw import PathfinderSettings
from simmim_jax.data.pathfinder_draw import draw_chunk
from simmim_jax.data.pathfinder_draw import draw_contours
from simmim_jax.data.pathfinder_draw import draw_example
from simmim_jax.data.pathfinder_draw import draw_task
from simmim_jax.data.pathfinder_draw import render

__all__ = ['CHUNK_SIZE', 'DIFFICULTIES', 'LraPathfinder', 'PathfinderConfig',
           'PathfinderExample', 'PathfinderSettings', 'RESOLUTIONS',
           'draw_chunk', 'draw_contours', 'draw_example', 'draw_split',
           'render', 'split_seed']

SPLITS = ('train', 'validation', 'test')
LRA_SIZES = (160_000, 20_000, 20_000)
CITATION = """@inproceedings{linsley2018learning,
  title={Learning long-range spatial dependencies with horizontal gated
         recurrent units},
  author={Linsley, Drew and Kim, Junkyung and Veerabadran, Vijay and
          Windolf, Charles and Serre, Thomas},
  booktitle={NeurIPS}, year={2018}}"""


def split_seed(seed: int, split: str, resolution: int,
               difficulty: str) -> int:
  """A seed of its own per split and kind of image, from the config seed."""
  text = f'lra_pathfinder/{resolution}/{difficulty}/{seed}/{split}'
  digest = hashlib.sha256(text.encode()).digest()
  return int.from_bytes(digest[:8], 'little')


def draw_split(settings: PathfinderSettings, num_examples: int, seed: int,
               num_workers: Optional[int] = None
               ) -> Iterator[PathfinderExample]:
  """Yields the `num_examples` images of a split, in order.

  num_workers: processes drawing chunks (None: one per CPU; 1: this
  process). The images do not depend on it. The processes import the main
  module as multiprocessing's spawn does: a script that draws with more
  than one must do so under `if __name__ == '__main__':`.
  """
  checks.integer(num_examples, 'num_examples', minimum=0)
  tasks = [(settings, seed, c, min(CHUNK_SIZE, num_examples - start))
           for c, start in enumerate(range(0, num_examples, CHUNK_SIZE))]
  if num_workers is None:
    num_workers = len(os.sched_getaffinity(0))
  num_workers = min(checks.integer(num_workers, 'num_workers'), len(tasks))
  if num_workers <= 1:
    for task in tasks:
      yield from draw_task(task)
    return
  # Workers fork from a server process that imported the drawing code once,
  # not from this one: a fork of a process running JAX threads may hang.
  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload([draw_task.__module__])
  with context.Pool(num_workers) as pool:
    for examples in pool.imap(draw_task, tasks):
      yield from examples


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
  """Resolution (32, 64, 128), difficulty (easy, intermediate, hard) and
  examples per split (train, validation, test)."""
  resolution: int = 32
  difficulty: str = 'hard'
  num_examples: tuple[int, int, int] = LRA_SIZES
  seed: int = 0

  @property
  def settings(self) -> PathfinderSettings:
    return PathfinderSettings.for_resolution(self.resolution, self.difficulty)


def _configs() -> list[PathfinderConfig]:
  configs = [
      PathfinderConfig(
          name=f'pf{r}_{d}', resolution=r, difficulty=d,
          description=f'{r}x{r} pixels, contours of {n} dashes; LRA sizes.')
      for r in RESOLUTIONS for d, n in DIFFICULTIES.items()]
  for d in ('easy', 'hard'):
    configs.append(PathfinderConfig(
        name=f'pf32_{d}_small', difficulty=d,
        num_examples=(20_000, 2_000, 2_000),
        description=f'pf32_{d} with 20k/2k/2k examples.'))
  configs.append(PathfinderConfig(
      name='pf32_hard_tiny', num_examples=(512, 128, 128),
      description='pf32_hard with 512/128/128 examples: tests.'))
  return configs


class LraPathfinder(tfds.core.GeneratorBasedBuilder):
  """Pathfinder (LRA) images drawn by a seeded generator after snakes2.py."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Seeded numpy generator after snakes2.py.'}
  BUILDER_CONFIGS = _configs()

  def __init__(self, *, file_format=None, num_workers: Optional[int] = None,
               **kwargs):
    # Array-record files are read back without TensorFlow. num_workers:
    # processes drawing images (None: one per CPU); the data is the same.
    self._num_workers = num_workers
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    settings = self.builder_config.settings
    r, n = settings.resolution, settings.contour_length
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(r, r), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=2),
            'markers': tfds.features.Tensor(shape=(2, 2), dtype=np.float32),
            'contours': tfds.features.Tensor(shape=(2, n, 2, 2),
                                             dtype=np.float32),
            'distractors': tfds.features.Tensor(shape=(None, 2, 2),
                                                dtype=np.float32),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/google-research/long-range-arena',
        citation=CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    config = self.builder_config
    examples = draw_split(
        config.settings, config.num_examples[SPLITS.index(split)],
        split_seed(config.seed, split, config.resolution, config.difficulty),
        self._num_workers)
    for i, example in enumerate(examples):
      yield i, {'image': example.image, 'label': example.label,
                'markers': example.markers, 'contours': example.contours,
                'distractors': example.distractors}
