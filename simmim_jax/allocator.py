"""glibc malloc settings for XLA's CPU runtime, applied on `import simmim_jax`.

XLA's CPU client allocates each call's outputs and temporaries with malloc.
With glibc's defaults, large blocks are mapped afresh and handed back to the
kernel when freed, so a call pays a page fault per fresh 4 KiB page:
`segment_attention`'s forward+backward at 8192 tokens took 20,737-21,762
faults and 68-76 ms per call, against 0 faults and 49-50 ms with the
settings below (BENCHMARKS.md, "The allocator"). Blocks of up to 2 GiB come
from the heap (mmap threshold), freed memory stays there for the next call
(trim threshold), and all threads share one arena: with an arena per
worker thread, the thresholds alone left the fault count to chance.
The cost is resident memory that is not returned to the system while the
process lives, which a training or benchmark process reuses anyway.

A setting also given as a glibc environment variable (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) keeps the user's value;
`SIMMIM_JAX_TUNE_MALLOC=0` leaves malloc alone. The settings are global to
the process (a PyTorch imported beside it gets them too). The arena limit
binds threads created afterwards, so it covers XLA's threads only when
simmim_jax is imported before JAX runs its first computation.
"""

import ctypes
import os
import platform

# mallopt parameters (glibc's malloc.h) and the environment variables that
# set the same ones at process start.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_LARGEST = 2**31 - 1  # mallopt takes an int
SETTINGS = (
    ('MALLOC_MMAP_THRESHOLD_', _M_MMAP_THRESHOLD, _LARGEST),
    ('MALLOC_TRIM_THRESHOLD_', _M_TRIM_THRESHOLD, _LARGEST),
    ('MALLOC_ARENA_MAX', _M_ARENA_MAX, 1),
)
OPT_OUT = 'SIMMIM_JAX_TUNE_MALLOC'

# What `tune_malloc` set, by environment-variable name: the record that
# benchmark reports carry.
applied: dict[str, int] = {}


def tune_malloc() -> dict[str, int]:
  """Applies the settings the user has not set; returns those it applied.

  Does nothing off Linux/glibc or when SIMMIM_JAX_TUNE_MALLOC=0.
  """
  if os.environ.get(OPT_OUT, '1') == '0':
    return {}
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return {}
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return {}
  for name, parameter, value in SETTINGS:
    if name not in os.environ and libc.mallopt(parameter, value) == 1:
      applied[name] = value
  return dict(applied)
