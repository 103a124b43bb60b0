r"""Random files in the formats of CIFAR-10's python release and LRA's AAN
TSVs, to try the LRA Image and Retrieval pipelines, and time their configs,
on a machine without the data. Nothing learnable is in them: labels are
random.

  python -m experiments.synthetic_lra_files --out=/tmp/lra_manual
  python -m experiments.train \
      --config=experiments/configs/lra_image.py:lra_cpu \
      --config.data.manual_dir=/tmp/lra_manual \
      --config.data.data_dir=/tmp/tfds --workdir=/tmp/runs/image
"""

import os
import pickle

from absl import flags
import numpy as np

from experiments import cli
from simmim_jax.data import lra_image
from simmim_jax.data import lra_retrieval

_OUT = flags.DEFINE_string('out', None, 'the manual_dir to write')
_IMAGES = flags.DEFINE_integer('images_per_batch', 1000,
                               'images per CIFAR batch file (10,000 real)')
_PAIRS = flags.DEFINE_integer('pairs', 2000, 'text pairs per AAN split')
_SEED = flags.DEFINE_integer('seed', 0, 'random seed')
flags.mark_flag_as_required('out')


def write_cifar10(directory: str, images_per_batch: int,
                  rng: np.random.Generator) -> None:
  """cifar-10-batches-py/: data_batch_1..5 and test_batch, each a pickled
  dict of b'data' uint8 [images, 3072] (R, G, B planes) and b'labels'."""
  folder = os.path.join(directory, lra_image.FOLDER)
  os.makedirs(folder, exist_ok=True)
  for name in lra_image.TRAIN_BATCHES + (lra_image.TEST_BATCH,):
    batch = {b'data': rng.integers(0, 256, (images_per_batch, 3072),
                                   dtype=np.uint8),
             b'labels': rng.integers(0, 10, images_per_batch).tolist()}
    with open(os.path.join(folder, name), 'wb') as f:
      pickle.dump(batch, f, protocol=2)


def write_aan(directory: str, pairs: int, rng: np.random.Generator) -> None:
  """new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2;
  texts of printable ASCII, longer than the 4,000 bytes kept."""
  os.makedirs(directory, exist_ok=True)
  for name in lra_retrieval.RELEASE_FILES.values():
    with open(os.path.join(directory, name), 'w') as f:
      for i in range(pairs):
        texts = [bytes(rng.integers(32, 127, lra_retrieval.MAX_BYTES + 500,
                                    dtype=np.uint8)).decode()
                 for _ in range(2)]
        f.write(f'{rng.integers(0, 2)}\tp{i}a\tp{i}b\t{texts[0]}\t'
                f'{texts[1]}\n')


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  write_cifar10(_OUT.value, _IMAGES.value, rng)
  write_aan(_OUT.value, _PAIRS.value, rng)
  print(f'wrote {lra_image.FOLDER}/ and the AAN TSVs to {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
