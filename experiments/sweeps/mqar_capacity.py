r"""Where do segment states run out? MQAR over lengths x key-value pairs.

  python -m experiments.sweep --config=experiments/configs/mqar.py:cpu \
      --sweep=experiments/sweeps/mqar_capacity.py:grid \
      --workdir=runs/mqar_capacity --parallel=1

Every setting spreads its queries uniformly (power_a 1) over the sequence,
with vocabulary 64; the config's segments of 32 tokens put most queries
segments away from their key (`python -m experiments.data_stats` gives the
share per setting). Every family gets the same steps at a setting, the
budget at which the calibration's transformer solved it with a margin
(docs/long_range.md): 1,000 steps up to 128 tokens, 1,500 at 256, 2,000 at
512. Variants (after the colon):
  calibrate: the transformer alone at the grid's corners and two peak
             learning rates: the budget at which full attention solves the
             task, before any other family runs (docs/long_range.md).
  grid:      simmim, local and transformer at every length (64, 128, 256)
             x pairs (4, 8, 16), 2 seeds (grid:SEEDS for another number).
  long:      the three families at 512 tokens x 16 pairs, 2 seeds: the
             grid's next length at its hardest pair count.
  levers:    SimMIM's levers at 128 tokens x 16 pairs, 2 seeds: k states
             per segment, tokens attending over the states, the segment
             length, the state key dimension, depth, width (d_model 128).
             The 16 pairs fill the first segment of 32, so no query shares
             its key's segment: everything must pass through the states.
  states:    the levers' setting with tokens attending over k states per
             segment, k = 2, 8, 16, 32 (the levers have k = 1 and 4): how
             many vectors per segment carry 16 pairs. k = 32 keeps every
             position of a segment of 32, full attention's reach at its cost.
"""

from simmim_jax import sweep

LENGTHS = (64, 128, 256)
PAIRS = (4, 8, 16)
FAMILIES = ('simmim', 'local', 'transformer')
VOCAB = 64
STEPS = {64: 1000, 128: 1000, 256: 1500, 512: 2000}


def setting(length: int, pairs: int) -> dict:
  """The data fields and step budget of one MQAR setting."""
  return {'data.builder_config': f'L{length}_kv{pairs}_v{VOCAB}_a1',
          'data.max_len': length, 'num_steps': STEPS[length]}


SETTINGS = [setting(length, pairs) for length in LENGTHS for pairs in PAIRS]

LEVERS = (
    {},                                              # reference: k 1, merge
    {'model.states_per_segment': 2},
    {'model.states_per_segment': 4},
    {'model.state_readout': 'attend'},
    {'model.state_readout': 'attend', 'model.states_per_segment': 4},
    {'model.segment_len': 16},
    {'model.segment_len': 64},
    {'model.state_key_dim': 16},
    {'model.num_layers': 4},
    {'model.d_model': 128, 'model.mlp_dim': 256},
)
LEVER_SETTINGS = (setting(128, 16),)
ATTENDED_STATES = (2, 8, 16, 32)


def get_sweep(variant: str = 'grid'):
  name, _, seeds = variant.partition(':')
  if seeds and (not seeds.isdigit() or int(seeds) < 1):
    raise ValueError(f'seeds must be a positive integer, got {seeds!r}')
  if name == 'calibrate':  # run with --config.num_steps=2000
    corners = [{k: v for k, v in setting(length, pairs).items()
                if k != 'num_steps'}
               for length, pairs in ((128, 8), (256, 16), (512, 16))]
    return sweep.with_seeds([
        {**corner, 'model.family': 'transformer', 'learning_rate': rate}
        for corner in corners for rate in (1e-3, 3e-3)], int(seeds or 1))
  if name == 'grid':
    return sweep.with_seeds(
        [{**data, 'model.family': family}
         for data in SETTINGS for family in FAMILIES], int(seeds or 2))
  if name == 'long':
    return sweep.with_seeds(
        [{**setting(512, 16), 'model.family': family}
         for family in FAMILIES], int(seeds or 2))
  if name == 'levers':
    return sweep.with_seeds(
        [{**data, 'model.family': 'simmim', **lever}
         for data in LEVER_SETTINGS for lever in LEVERS], int(seeds or 2))
  if name == 'states':
    return sweep.with_seeds(
        [{**data, 'model.family': 'simmim', 'model.state_readout': 'attend',
          'model.states_per_segment': k}
         for data in LEVER_SETTINGS for k in ATTENDED_STATES], int(seeds or 2))
  raise ValueError(f"unknown variant {variant!r}: use 'calibrate', "
                   "'grid[:SEEDS]', 'long[:SEEDS]', 'levers[:SEEDS]' or "
                   "'states[:SEEDS]'")
