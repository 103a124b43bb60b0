"""Test set-up: 8 fake CPU devices for the sharding tests, quick compiles, a
compile cache.

XLA reads the flags when the backend starts, so they are set before any test
module imports jax; the subprocesses the tests start inherit them.
"""

import os
import shutil
import tempfile

# The tests' programs are small and mostly compiled once: LLVM's optimisation
# passes take longer than running them. Level 0 skips those passes (XLA's
# own passes and floating-point semantics are unchanged) and cuts the
# suite's compile time by about a third. XLA's CPU fusion emitters (the
# default) build each fusion through MLIR, which costs more than the older
# emitters for programs this small: turning them off cut the compile of a
# one-layer SimMIM train step from 4.7 to 2.1 s, and the suite's CPU time
# (tests and the processes they start) from about 1,130 to 670 s, with
# every test passing unchanged.
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''),
     '--xla_force_host_platform_device_count=8',
     '--xla_backend_optimization_level=0',
     '--xla_cpu_use_fusion_emitters=false']).strip()

# One compilation cache per test run, shared by both test processes and the
# subprocesses they start: the many small training runs, restarts after
# kill -9 and sweep points compile the same programs. Every run starts empty,
# so each program is still compiled at least once per run. Every program is
# kept, however quick to compile: a restarted run's many small ones add up.
# The controller sets it before it starts the test processes, which inherit it.
_CACHE = os.environ.setdefault('SIMMIM_JAX_TEST_COMPILE_CACHE', os.path.join(
    tempfile.gettempdir(), f'simmim_jax_test_compile_cache_{os.getpid()}'))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The files that take longest, longest first (by the summed durations that
# pytest lists on 2 cores). pytest.ini hands files to the two processes in
# collection order (--no-loadscope-reorder), so these start first and the
# short files even out the end: neither process is left running one long
# file alone. A file not listed runs after them.
LONGEST_FIRST = ('test_train.py', 'test_pretraining.py', 'test_models.py',
                 'test_distill.py', 'test_sweep.py', 'test_template_layer.py',
                 'test_notebooks.py', 'test_decoding.py', 'test_benchmark.py',
                 'test_templates.py', 'test_attention.py', 'test_configs.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST
            else len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: a file's tests stay together, in order


def pytest_sessionfinish(session):
  if not hasattr(session.config, 'workerinput'):  # the controller, last out
    shutil.rmtree(_CACHE, ignore_errors=True)


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
