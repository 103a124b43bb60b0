"""Test set-up: 8 fake CPU devices for the sharding tests.

XLA reads the flag when the backend starts, so it is set before any test
module imports jax.
"""

import os

os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''),
     '--xla_force_host_platform_device_count=8']).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir holding lra_listops/tiny, built once per test run."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import simmim_jax.data  # noqa: F401  pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('lra_listops/tiny', data_dir=path).download_and_prepare(
      file_format='array_record')
  return path
