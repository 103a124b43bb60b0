"""Compile-time cost of a function: XLA's FLOP count and memory plan.

Nothing is executed, so the cost of inputs too large to run can be read.
"""

import time
from typing import Any, Callable

import jax
import numpy as np

# Elementwise and reduction primitives counted as one FLOP per element.
_ELEMENTWISE = frozenset((
    'add', 'sub', 'mul', 'div', 'neg', 'max', 'min', 'abs', 'sign', 'exp',
    'exp2', 'log', 'log1p', 'expm1', 'tanh', 'logistic', 'sqrt', 'rsqrt',
    'pow', 'integer_pow', 'square', 'erf', 'erf_inv', 'sin', 'cos',
    'select_n', 'clamp', 'add_any', 'reduce_precision'))
_REDUCTIONS = frozenset(('reduce_sum', 'reduce_max', 'reduce_min',
                         'reduce_prod', 'argmax', 'argmin', 'cumsum',
                         'cummax', 'cumlogsumexp'))


def jaxpr_flops(fn: Callable[..., Any], *args: Any) -> float:
  """FLOPs of `fn(*args)` counted on its jaxpr; args may be ShapeDtypeStructs.

  A dot counts 2 * output size * contracted size; elementwise ops and
  reductions one per element. Unlike XLA's cost analysis, which counts a loop
  body once, a `lax.scan` / `lax.map` body counts once per iteration (a
  `while_loop`, whose trip count is not static, counts once; a `cond`, its
  dearest branch).
  """
  return float(_count(jax.make_jaxpr(fn)(*args).jaxpr))


def _count(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[d] for d in contracting])
    elif name == 'scan':
      total += eqn.params['length'] * _count(eqn.params['jaxpr'].jaxpr)
    elif name == 'cond':
      total += max(_count(branch.jaxpr) for branch in eqn.params['branches'])
    elif name in _ELEMENTWISE:
      total += float(np.prod(eqn.outvars[0].aval.shape))
    elif name in _REDUCTIONS:
      total += float(np.prod(eqn.invars[0].aval.shape))
    else:  # jit, custom_vjp/jvp, remat, while, shard_map...: their bodies
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            total += _count(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            total += _count(sub)
  return total


def compiled_cost(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
  """Cost and memory of `jax.jit(fn)(*args)`; args may be ShapeDtypeStructs.

  Returns:
    flops: `jaxpr_flops`, every loop iteration counted.
    xla_flops: XLA's count of floating-point operations (a loop body once).
    bytes_accessed: bytes read and written by all operations.
    temp_bytes: scratch memory the compiled program allocates.
    peak_bytes: arguments + outputs + scratch (aliased buffers counted once).
    compile_seconds: wall time of lowering and compiling.
  """
  return compile_with_cost(fn, *args)[1]


def compile_with_cost(fn: Callable[..., Any], *args: Any,
                      donate_argnums: tuple[int, ...] = ()
                      ) -> tuple[Any, dict[str, float]]:
  """(the compiled `jax.jit(fn, donate_argnums=...)` for args' shapes, its
  `compiled_cost`): a caller that also runs the program compiles it once."""
  start = time.perf_counter()
  traced = jax.jit(fn, donate_argnums=donate_argnums).trace(*args)
  compiled = traced.lower().compile()  # one trace serves both counts
  seconds = time.perf_counter() - start
  return compiled, {**program_cost(compiled),
                    'flops': float(_count(traced.jaxpr.jaxpr)),
                    'compile_seconds': seconds}


def program_cost(compiled: Any) -> dict[str, float]:
  """XLA's cost and memory plan of a compiled program
  (`jit(f).lower().compile()`): `compiled_cost` without `flops` (the jaxpr
  count) and compile time."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  memory = compiled.memory_analysis()
  return {
      'xla_flops': float(cost.get('flops', 0.0)),
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
      'temp_bytes': float(memory.temp_size_in_bytes),
      'peak_bytes': float(memory.argument_size_in_bytes
                          + memory.output_size_in_bytes
                          - memory.alias_size_in_bytes
                          + memory.temp_size_in_bytes),
  }


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up (and compile)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))
