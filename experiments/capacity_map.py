r"""MQAR capacity maps of a finished (or partly finished) sweep.

  python -m experiments.capacity_map --sweep_dir=runs/mqar_capacity \
      --out=docs/long_range/mqar_capacity

For every family: test query accuracy over sequence length x key-value
pairs (mean over seeds), as a heat map `capacity_<family>.png`, and one
markdown table `capacity.md` with, per setting, the share of test queries
that sit in their key's segment (what segment attention alone can answer),
each family's accuracy (mean +- std, seeds), forward GFLOPs per example and
training tokens per second. Reads the sweep's summary rows, so it works on
any points that have finished.
"""

import collections
import os
from typing import Any, Sequence

from absl import flags
import matplotlib
import numpy as np

from experiments import cli
from simmim_jax import checks
from simmim_jax.data import mqar
from simmim_jax.sweep import summary as sweep_summary
from simmim_jax.training import run_dir

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'the sweep directory')
_OUT = flags.DEFINE_string('out', None, 'where the maps and table go')
flags.mark_flags_as_required(['sweep_dir', 'out'])

METRIC = 'test_query_accuracy'


def cells(rows: Sequence[dict[str, Any]],
          sweep_dir: str) -> dict[tuple, dict[str, Any]]:
  """{(family, seq_len, pairs, segment_len, vocab, power_a): the finished
  seeds' numbers} over rows of load_summary; family and segment length
  are read from each point's saved config."""
  grouped = collections.defaultdict(list)
  for row in rows:
    if row.get('status') != 'done' or row.get(METRIC) is None:
      continue
    config = run_dir.load_config(os.path.join(sweep_dir, row['name']))
    setting = mqar.parse_config(config['data']['builder_config'])
    key = (config['model']['family'], setting.seq_len, setting.num_kv_pairs,
           config['model']['segment_len'], setting.vocab_size,
           setting.power_a)
    grouped[key].append(row)
  out = {}
  for key, group in grouped.items():
    values = np.array([r[METRIC] for r in group])
    speeds = [r['tokens_per_second'] for r in group
              if r.get('tokens_per_second')]
    out[key] = {'mean': float(values.mean()), 'seeds': len(values),
                'std': float(values.std(ddof=1)) if len(values) > 1 else None,
                'gflops': group[0].get('forward_gflops'),
                'tokens_per_second': float(np.median(speeds)) if speeds
                                     else None}
  return out


def same_segment_share(seq_len: int, pairs: int, segment_len: int,
                       vocab: int, power_a: float) -> float:
  """The share of the test split's queries in their key's segment."""
  setting = mqar.make_config(seq_len, pairs, vocab, power_a)
  tokens, targets = mqar.generate_mqar(
      setting.num_examples[2], seq_len=seq_len, num_kv_pairs=pairs,
      vocab_size=vocab, power_a=power_a,
      seed=mqar.split_seed(setting.seed, 'test'))
  return mqar.same_segment_share(tokens, targets, pairs, segment_len)


def table(numbers: dict[tuple, dict[str, Any]],
          shares: dict[tuple, float]) -> str:
  """One markdown row per setting (seq_len, pairs, segment_len, vocab,
  power_a); a column group per family."""
  families = sorted({key[0] for key in numbers})
  settings = sorted({key[1:] for key in numbers})
  header = ['tokens', 'pairs', 'segment', "in key's segment"]
  header += [f'{f} acc' for f in families]
  header += [f'{f} GFLOP/ex' for f in families]
  header += [f'{f} tok/s' for f in families]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for setting in settings:
    found = [numbers.get((family, *setting)) for family in families]
    row = [str(setting[0]), str(setting[1]), str(setting[2]),
           f'{shares[setting]:.3f}']
    for cell in found:
      if cell is None:
        row.append('-')
        continue
      text = f"{cell['mean']:.3f}"
      if cell['std'] is not None:
        text += f" +- {cell['std']:.3f}"
      row.append(f"{text} ({cell['seeds']})")
    row += ['-' if c is None or c['gflops'] is None else f"{c['gflops']:.3g}"
            for c in found]
    row += ['-' if c is None or c['tokens_per_second'] is None
            else f"{c['tokens_per_second']:,.0f}" for c in found]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def heat_map(path: str, family: str, numbers: dict[tuple, dict[str, Any]],
             segment_len: int) -> None:
  lengths = sorted({k[1] for k in numbers if k[3] == segment_len})
  pairs = sorted({k[2] for k in numbers if k[3] == segment_len})
  grid = np.full((len(pairs), len(lengths)), np.nan)
  for (fam, length, pair, segment, *_), cell in numbers.items():
    if fam == family and segment == segment_len:
      grid[pairs.index(pair), lengths.index(length)] = cell['mean']
  fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, len(pairs) + 1.5))
  image = ax.imshow(grid, vmin=0, vmax=1, cmap='viridis', origin='lower')
  for (i, j), value in np.ndenumerate(grid):
    if not np.isnan(value):
      ax.text(j, i, f'{value:.2f}', ha='center', va='center',
              color='white' if value < 0.6 else 'black')
  ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
  ax.set_yticks(range(len(pairs)), [str(p) for p in pairs])
  ax.set_xlabel('sequence length (tokens)')
  ax.set_ylabel('key-value pairs')
  ax.set_title(f'{family}: MQAR test query accuracy\n(segments of '
               f'{segment_len})', fontsize=10)
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_maps(sweep_dir: str, out: str) -> str:
  """Writes the maps and capacity.md into `out`; returns the table."""
  numbers = cells(sweep_summary.load_summary(sweep_dir), sweep_dir)
  if not numbers:
    raise checks.ConfigError(
        f'{sweep_dir}: no finished point has a {METRIC}; is it an MQAR '
        'sweep with finished points?')
  shares = {key[1:]: same_segment_share(*key[1:]) for key in numbers}
  os.makedirs(out, exist_ok=True)
  text = table(numbers, shares)
  with open(os.path.join(out, 'capacity.md'), 'w') as f:
    f.write(text + '\n')
  segment_lens = {k[3] for k in numbers}
  for family, segment_len in sorted({(k[0], k[3]) for k in numbers}):
    name = f'capacity_{family}' + (
        '' if len(segment_lens) == 1 else f'_seg{segment_len}')
    heat_map(os.path.join(out, name + '.png'), family, numbers, segment_len)
  return text


def main(argv):
  del argv
  print(write_maps(_SWEEP_DIR.value, _OUT.value))
  return 0


if __name__ == '__main__':
  cli.run(main)
