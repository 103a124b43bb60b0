"""`import simmim_jax` tunes glibc's malloc unless the user set it or opted
out, and a tuned process runs segment attention without page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

from simmim_jax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='the settings are glibc mallopt parameters')

_FAULTS = """
import json, resource
import jax, jax.numpy as jnp
import simmim_jax
from simmim_jax import allocator
keys = jax.random.split(jax.random.key(0), 4)
q, k, v, cotangent = (jax.random.normal(key, (1, 8192, 8, 64)) for key in keys)
grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(
    simmim_jax.segment_attention(q, k, v, 128) * cotangent), argnums=(0, 1, 2)))
for _ in range(2):
  jax.block_until_ready(grad(q, k, v))
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(grad(q, k, v))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': allocator.applied, 'faults': sorted(faults)}))
"""


def _run(code, **env):
  clean = {name: value for name, value in os.environ.items()
           if not name.startswith('MALLOC_') and name != allocator.OPT_OUT}
  result = subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, env={**clean, **env},
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


_APPLIED = ('import json, simmim_jax; from simmim_jax import allocator; '
            'print(json.dumps(allocator.applied))')


def test_import_applies_every_setting():
  assert _run(_APPLIED) == {name: value
                            for name, _, value in allocator.SETTINGS}


def test_a_setting_the_user_made_is_kept():
  applied = _run(_APPLIED, MALLOC_ARENA_MAX='2')
  assert 'MALLOC_ARENA_MAX' not in applied
  assert set(applied) == {'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'}


def test_opting_out_leaves_malloc_alone():
  assert _run(_APPLIED, **{allocator.OPT_OUT: '0'}) == {}


def test_tuned_segment_attention_takes_no_page_faults():
  # With glibc's defaults this call takes thousands of faults every time
  # (BENCHMARKS.md, "The allocator"); tuned, its buffers come back from the
  # heap, with a fault spell in an occasional call.
  result = _run(_FAULTS)
  assert len(result['applied']) == 3
  assert result['faults'][4] <= 64, result
