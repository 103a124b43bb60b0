"""Compile time of the train step, cold and warm, against depth: a fresh
persistent compilation cache for the measurement, XLA's compile events
counted while it runs."""

import contextlib
import shutil
import tempfile
from typing import Iterator, Sequence

import jax
from jax._src import dispatch  # the name of XLA's compile event
from jax.experimental.compilation_cache import compilation_cache

from experiments.benchmark import cases as cases
from experiments.benchmark.report import Row
from simmim_jax.cost import compiled_cost


def compile_vs_depth(sizes: cases.Sizes, families: Sequence[str],
                     depths: Sequence[int], length: int) -> list[Row]:
  """Train-step compile seconds per family and depth at `length` (blocks
  are under nn.scan: the program should not grow with depth), cold and
  warm: with JAX's in-memory caches cleared, first with the program not in
  a fresh persistent compilation cache (tracing, lowering, XLA's compile
  and writing it), then again, loading it from there. Each also gives the
  seconds XLA's compile took and whether the persistent cache answered."""
  with fresh_persistent_cache():
    return [_compile_cold_and_warm(sizes, family, length, depth)
            for family in families for depth in depths]


def _compile_cold_and_warm(sizes: cases.Sizes, family: str, length: int,
                           depth: int) -> Row:
  case = cases.train_step_case(sizes, family, length, depth)
  specs = jax.eval_shape(case.inputs)
  row = {'name': case.name, 'num_layers': depth, 'length': length}
  for prefix in ('', 'warm_'):
    jax.clear_caches()
    with _compile_events() as events:
      cost = compiled_cost(case.modes[cases.TRAIN_STEP], *specs)
    row.update({f'{prefix}compile_seconds': cost['compile_seconds'],
                f'{prefix}xla_compile_seconds': events['xla_seconds'],
                f'{prefix}cache_hit': events['cache_hits'] > 0})
  return {**row, 'flops': cost['flops'], 'peak_bytes': cost['peak_bytes']}


@contextlib.contextmanager
def _compile_events() -> Iterator[dict[str, float]]:
  """Seconds in XLA's compile and persistent-cache hits during the block."""
  events = {'xla_seconds': 0.0, 'cache_hits': 0}

  def on_duration(event, seconds, **_):
    if event == dispatch.BACKEND_COMPILE_EVENT:
      events['xla_seconds'] += seconds

  def on_event(event, **_):
    if event == '/jax/compilation_cache/cache_hits':
      events['cache_hits'] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)


@contextlib.contextmanager
def fresh_persistent_cache() -> Iterator[str]:
  """JAX's persistent compilation cache in a new empty directory, keeping
  every program, for the block; the process's own setting after."""
  directory = tempfile.mkdtemp(prefix='simmim_jax_benchmark_cache_')
  saved = {name: getattr(jax.config, name) for name in (
      'jax_compilation_cache_dir',
      'jax_persistent_cache_min_compile_time_secs')}
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  try:
    yield directory
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
    shutil.rmtree(directory, ignore_errors=True)
