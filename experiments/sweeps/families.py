r"""The three families with everything else equal, over seeds.

  python -m experiments.sweep \
      --config=experiments/configs/listops.py:small_cpu \
      --sweep=experiments/sweeps/families.py[:SEEDS] --workdir=runs/families

The variant is the number of seeds (default 3: seeds 0, 1, 2).
"""

from simmim_jax import sweep

FAMILIES = ('simmim', 'local', 'transformer')


def get_sweep(variant: str = '3'):
  if not variant.isdigit() or int(variant) < 1:
    raise ValueError(f'variant is the number of seeds (>= 1), got {variant!r}')
  return sweep.with_seeds(sweep.product({'model.family': FAMILIES}),
                          int(variant))
