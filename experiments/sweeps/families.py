r"""The three families with everything else equal, over seeds.

  python -m experiments.sweep \
      --config=experiments/configs/listops.py:small_cpu \
      --sweep=experiments/sweeps/families.py[:SEEDS[,FAMILY...]] \
      --workdir=runs/families

The variant is the number of seeds (default 3: seeds 0, 1, 2), optionally
followed by the families to run (default all three), e.g. `2,simmim,local`
for a longer run of the segment families alone. Point names hold only the
family and seed, so such a run goes in its own workdir.
"""

from simmim_jax import sweep

FAMILIES = ('simmim', 'local', 'transformer')


def get_sweep(variant: str = '3'):
  seeds, *families = variant.split(',')
  if not seeds.isdigit() or int(seeds) < 1:
    raise ValueError(f'variant is SEEDS[,FAMILY...] with SEEDS >= 1, got '
                     f'{variant!r}')
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown or len(set(families)) < len(families):
    raise ValueError(f'families.py variant {variant!r}: families must be '
                     f'distinct names from {FAMILIES}')
  return sweep.with_seeds(
      sweep.product({'model.family': families or FAMILIES}), int(seeds))
