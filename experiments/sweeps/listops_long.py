r"""ListOps at LRA length trained 3x longer: SimMIM over 2 seeds, the
transformer over 1 (its step took 5.4-5.6 s against SimMIM's 1.0 s on a
2-core VM, docs/ablations.md).

  python -m experiments.sweep --config=experiments/configs/listops.py:lra_cpu \
      --sweep=experiments/sweeps/listops_long.py \
      --workdir=docs/long_range/listops_lra_2400 --config.num_steps=2400

The variant is the transformer's number of seeds (default 1; 0 runs SimMIM's
two seeds alone, into the same workdir). The transformer's first seed runs
first: it is the long point, and the question (does it leave the majority
class?) is about it.
"""

from simmim_jax import sweep


def get_sweep(variant: str = '1'):
  if not variant.isdigit():
    raise ValueError(f"variant is the transformer's number of seeds (>= 0), "
                     f'got {variant!r}')
  simmim = sweep.with_seeds([{'model.family': 'simmim'}], 2)
  transformer = sweep.with_seeds([{'model.family': 'transformer'}],
                                 int(variant))
  return transformer[:1] + simmim + transformer[1:]  # 0 seeds: SimMIM's alone
