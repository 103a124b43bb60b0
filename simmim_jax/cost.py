"""Compile-time cost of a function: XLA's FLOP count and memory plan.

Nothing is executed, so the cost of inputs too large to run can be read.
"""

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax import models
from simmim_jax.config import ModelConfig


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
  start = time.perf_counter()
  traced = jax.jit(fn).trace(*args)  # one trace serves both counts
  compiled = traced.lower().compile()
  seconds = time.perf_counter() - start
  return {**program_cost(compiled), 'flops': float(_count(traced.jaxpr.jaxpr)),
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


def compare_families(lengths: Sequence[int], *, run_up_to: int = 4096,
                     repeats: int = 3, batch: int = 1,
                     families: Sequence[str] = ('simmim', 'local',
                                                'transformer'),
                     **model_fields: Any) -> list[dict[str, Any]]:
  """Forward cost of the classifier per family and length, side by side.

  FLOPs and peak memory come from XLA's compiled program (no execution);
  the forward pass is timed (median of `repeats`) for lengths <= run_up_to.
  `model_fields` are ModelConfig fields shared by all families.
  """
  rows = []
  for length in lengths:
    for family in families:
      fields = {'vocab_size': 256, 'max_len': max(lengths), **model_fields,
                'family': family, 'head': 'classifier'}
      model = models.Classifier(ModelConfig.from_dict(fields))
      tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
      params = jax.eval_shape(model.init, jax.random.key(0), tokens)
      cost = compiled_cost(model.apply, params, tokens)
      row = {'length': length, 'family': family, 'flops': cost['flops'],
             'peak_bytes': cost['peak_bytes'], 'forward_seconds': None,
             'params': sum(np.prod(p.shape) for p in jax.tree.leaves(params))}
      if length <= run_up_to:
        real_params = jax.jit(model.init)(jax.random.key(0),
                                          jnp.zeros((batch, length), jnp.int32))
        real_tokens = jax.random.randint(jax.random.key(1), (batch, length), 0,
                                         fields['vocab_size'])
        apply = jax.jit(model.apply)
        row['forward_seconds'] = median_seconds(
            lambda: apply(real_params, real_tokens), repeats)
      rows.append(row)
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table of `compare_families` rows, with ratios to simmim."""
  simmim = {r['length']: r for r in rows if r['family'] == 'simmim'}
  lines = ['| length | family | GFLOPs | x simmim | peak MiB | forward ms |',
           '|---:|---|---:|---:|---:|---:|']
  for r in rows:
    base = simmim.get(r['length'])
    ratio = f"{r['flops'] / base['flops']:.2f}" if base else '-'
    ms = ('-' if r['forward_seconds'] is None
          else f"{r['forward_seconds'] * 1e3:.1f}")
    lines.append(f"| {r['length']} | {r['family']} | {r['flops'] / 1e9:.2f} | "
                 f"{ratio} | {r['peak_bytes'] / 2**20:.1f} | {ms} |")
  return '\n'.join(lines)
