r"""SimMIM's own switches, one at a time, against the config's defaults.

  python -m experiments.sweep \
      --config=experiments/configs/listops.py:small_cpu \
      --sweep=experiments/sweeps/smi_ablations.py[:SEEDS] \
      --workdir=runs/smi_ablations

The first point changes nothing (the reference); `segment_states=False` is
the local-only family. The variant is the number of seeds (default 2).
"""

from simmim_jax import sweep

ABLATIONS = (
    {},                                   # reference: the config as it is
    {'model.segment_states': False},      # no state attention, no merge
    {'model.exclude_self': False},        # states also attend to themselves
    {'model.ffn_merge': False},           # merge s~_i itself, not FFN(s~_i)
    {'model.pooling': 'mean'},            # no hierarchy: mean of tokens
    {'model.aggregator': 'weighted_sum'},
    {'model.aggregator': 'attention'},
    {'model.per_level_weights': False},   # one aggregator for every level
    {'model.segment_len': 32},
    {'model.segment_len': 128},
)


def get_sweep(variant: str = '2'):
  if not variant.isdigit() or int(variant) < 1:
    raise ValueError(f'variant is the number of seeds (>= 1), got {variant!r}')
  return sweep.with_seeds(ABLATIONS, int(variant))
