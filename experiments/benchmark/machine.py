"""The machine a benchmark runs on: its cores, its matmul ceiling and memory
bandwidth (measured in the same run as the cases held to them), PyTorch if
importable, and a description of it all for the report."""

import os
import platform
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from experiments.benchmark import cases as cases
from simmim_jax import allocator
from simmim_jax.cost import median_seconds
from simmim_jax.cost import program_cost

ENV_VARS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_',
            'MALLOC_ARENA_MAX', allocator.OPT_OUT, 'XLA_FLAGS')


def available_cpus() -> int:
  """Cores this process may run on (all of which XLA's CPU client uses)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def import_torch() -> tuple[Any, Optional[str]]:
  """(torch, None), or (None, why it cannot be imported)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    return None, f'torch not importable ({error})'
  return torch, None


def torch_device(torch: Any) -> str:
  """'cuda' when JAX runs on a GPU that torch sees too, else 'cpu'."""
  on_gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
  return 'cuda' if on_gpu else 'cpu'


def measure_ceiling(size: int, dtype, repeats: int) -> dict[str, Any]:
  """GFLOP/s of a [size, size] @ [size, size] matmul (2 size^3 FLOPs)."""
  a, b = (cases.normal(seed, (size, size), dtype) for seed in (0, 1))
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  seconds = median_seconds(lambda: matmul(a, b), repeats)
  flops = 2.0 * size ** 3
  return {'size': size, 'dtype': jnp.dtype(dtype).name, 'flops': flops,
          'xla_flops': program_cost(matmul)['xla_flops'],
          'seconds': seconds, 'gflops_per_s': flops / seconds / 1e9}


def measure_bandwidth(num_bytes: int, repeats: int) -> dict[str, Any]:
  """Bytes/s of an elementwise pass over `num_bytes` of float32 (read once,
  written once): the memory roofline the attention rows are held to."""
  x = cases.normal(0, (num_bytes // 4,), jnp.float32)
  double = jax.jit(lambda x: x * 2).lower(x).compile()
  seconds = median_seconds(lambda: double(x), repeats)
  moved = 2.0 * x.size * 4
  return {'bytes': moved, 'seconds': seconds,
          'gb_per_s': moved / seconds / 1e9}


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def describe(torch: Any, command: Sequence[str]) -> dict[str, Any]:
  """Devices, CPU, library versions, allocator/XLA env vars, the malloc
  settings simmim_jax applied (allocator.py), command line."""
  return {
      'devices': [str(d) for d in jax.devices()],
      'platform': jax.default_backend(),
      'os': platform.platform(),
      'cpu': _cpu_model(),
      'cpu_count': os.cpu_count(),
      'cpus_available': available_cpus(),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__,
                   'jaxlib': jaxlib.__version__,
                   'flax': flax.__version__, 'optax': optax.__version__,
                   'numpy': np.__version__,
                   'torch': None if torch is None else torch.__version__},
      'torch_threads': None if torch is None else torch.get_num_threads(),
      'torch_device': None if torch is None else torch_device(torch),
      'env': {name: os.environ.get(name) for name in ENV_VARS},
      'malloc_set_on_import': dict(allocator.applied),
      'command': ' '.join(command),
  }
