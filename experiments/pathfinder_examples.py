r"""A grid of Pathfinder images: one row per resolution and difficulty, the
label over each image (1: the two markers are on one contour).

  python -m experiments.pathfinder_examples --out=docs/pathfinder_examples.png

Images come from `simmim_jax.data.pathfinder.draw_example` with LRA's
settings, the same drawings the `lra_pathfinder` configs hold.
"""

import os

from absl import flags
import numpy as np

from experiments import cli
from simmim_jax.data import pathfinder

_OUT = flags.DEFINE_string('out', 'docs/pathfinder_examples.png',
                           'where to write the PNG')
_SEED = flags.DEFINE_integer('seed', 0, 'seed of the drawings')
_PER_ROW = flags.DEFINE_integer('per_row', 6, 'images per row (even)')


def draw_rows(per_row: int, seed: int):
  """[(row title, [PathfinderExample] * per_row)], labels 1, 0, 1, ..."""
  rows = []
  for resolution in pathfinder.RESOLUTIONS:
    for difficulty in pathfinder.DIFFICULTIES:
      settings = pathfinder.PathfinderSettings.for_resolution(resolution,
                                                              difficulty)
      rng = np.random.default_rng([seed, resolution, len(rows)])
      examples = [pathfinder.draw_example(rng, settings, 1 - i % 2)
                  for i in range(per_row)]
      name = f'pf{resolution} {difficulty}'
      if resolution == 128:
        name += ' (Path-X)'
      rows.append((name, examples))
  return rows


def plot(rows, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  per_row = len(rows[0][1])
  fig, axes = plt.subplots(len(rows), per_row, squeeze=False,
                           figsize=(1.6 * per_row, 1.75 * len(rows)))
  for (name, examples), row in zip(rows, axes):
    for example, ax in zip(examples, row):
      ax.imshow(example.image, cmap='gray', vmin=0, vmax=255,
                interpolation='nearest')
      ax.set_title(f'label {example.label}', fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(name, fontsize=8)
  fig.suptitle('Pathfinder: label 1 = both markers on one contour',
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv  # cli.run refuses extra arguments
  if _PER_ROW.value < 2 or _PER_ROW.value % 2:
    cli.fail(f'--per_row must be an even number >= 2, got {_PER_ROW.value}')
  rows = draw_rows(_PER_ROW.value, _SEED.value)
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  plot(rows, _OUT.value)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
