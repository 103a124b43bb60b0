"""SimMIM's forward cost against full attention and local-only, per length.

The table `python -m experiments.compare_cost` prints: FLOPs and peak memory
from XLA's compiled program (nothing executed), forward time measured.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax.cost import compiled_cost
from simmim_jax.cost import median_seconds
from simmim_jax.models import models
from simmim_jax.models.model_config import ModelConfig


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
