r"""float32 against bf16 (bf16 compute over float32 parameters), over seeds.

  python -m experiments.sweep --config=experiments/configs/listops.py:tiny \
      --sweep=experiments/sweeps/precision.py[:SEEDS] \
      --workdir=docs/precision/listops_tiny

The variant is the number of seeds (default 2). bf16 runs once with float32
AdamW moments and once with a bfloat16 first moment.
"""

from simmim_jax import sweep

PRECISIONS = (
    {'precision': 'float32'},
    {'precision': 'bf16'},
    {'precision': 'bf16', 'first_moment_dtype': 'bfloat16'},
)


def get_sweep(variant: str = '2'):
  if not variant.isdigit() or int(variant) < 1:
    raise ValueError(f'variant is the number of seeds (>= 1), got {variant!r}')
  return sweep.with_seeds(list(PRECISIONS), int(variant))
