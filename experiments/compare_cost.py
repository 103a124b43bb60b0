r"""Prints SimMIM's forward cost against full attention and local-only.

  python -m experiments.compare_cost [--lengths=1024,4096,16384] [--d_model=128]

FLOPs and peak memory are XLA's compile-time numbers; forward time is measured
(median of repeats) for lengths up to --run_up_to.
"""

import json

from absl import flags

from experiments import cli
from experiments.benchmark import family_cost
from simmim_jax import checks

_LENGTHS = flags.DEFINE_list('lengths', ['1024', '4096', '16384'],
                             'sequence lengths to compare')
_RUN_UP_TO = flags.DEFINE_integer('run_up_to', 4096,
                                  'time the forward pass up to this length')
_D_MODEL = flags.DEFINE_integer('d_model', 128, 'model width')
_LAYERS = flags.DEFINE_integer('num_layers', 2, 'blocks')
_SEGMENT_LEN = flags.DEFINE_integer('segment_len', 128, 'segment length')
_OUT = flags.DEFINE_string('out', None, 'also write the rows as JSON here')


def main(argv):
  del argv  # cli.run refuses extra arguments
  lengths = cli.int_list(_LENGTHS.value, '--lengths')
  checks.integer(_RUN_UP_TO.value, '--run_up_to', minimum=0)
  rows = family_cost.compare_families(
      list(lengths), run_up_to=_RUN_UP_TO.value,
      d_model=_D_MODEL.value, num_heads=4, mlp_dim=4 * _D_MODEL.value,
      num_layers=_LAYERS.value, segment_len=_SEGMENT_LEN.value)
  print(family_cost.format_table(rows))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  cli.run(main)
