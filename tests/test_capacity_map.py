"""experiments/capacity_map.py on a hand-made sweep directory."""

import json
import os

import numpy as np
import pytest

from experiments import capacity_map
from simmim_jax import checks
from simmim_jax.data import mqar


def _point(sweep_dir, name, family, builder_config, segment_len, accuracy):
  os.makedirs(os.path.join(sweep_dir, name))
  with open(os.path.join(sweep_dir, name, 'config.json'), 'w') as f:
    json.dump({'data': {'builder_config': builder_config},
               'model': {'family': family, 'segment_len': segment_len}}, f)
  return {'name': name, 'status': 'done', 'test_query_accuracy': accuracy,
          'forward_gflops': 0.5, 'tokens_per_second': 1000.0}


def test_maps_and_table_of_a_sweep(tmp_path):
  sweep_dir, out = str(tmp_path / 'sweep'), str(tmp_path / 'out')
  rows = [_point(sweep_dir, f'{family}-{length}-{seed}', family,
                 f'L{length}_kv4_v64_a1', 16, accuracy)
          for family, length, seed, accuracy in (
              ('simmim', 64, 0, 0.5), ('simmim', 64, 1, 0.7),
              ('local', 64, 0, 0.25), ('simmim', 128, 0, 0.125))]
  rows.append({'name': 'failed', 'status': 'failed'})
  with open(os.path.join(sweep_dir, 'summary.json'), 'w') as f:
    json.dump(rows, f)
  text = capacity_map.write_maps(sweep_dir, out).splitlines()
  assert text[0].startswith("| tokens | pairs | segment | in key's segment |"
                            ' local acc | simmim acc |')
  tokens, targets = mqar.generate_mqar(
      3000, seq_len=64, num_kv_pairs=4, vocab_size=64, power_a=1.0,
      seed=mqar.split_seed(0, 'test'))
  share = mqar.same_segment_share(tokens, targets, 4, 16)
  std = np.std([0.5, 0.7], ddof=1)
  assert text[2] == (f'| 64 | 4 | 16 | {share:.3f} | 0.250 (1) | 0.600 +- '
                     f'{std:.3f} (2) | 0.5 | 0.5 | 1,000 | 1,000 |')
  assert text[3].startswith('| 128 | 4 | 16 |') and '| - | 0.125 (1) |' in (
      text[3])
  for family in ('simmim', 'local'):
    assert os.path.getsize(os.path.join(out, f'capacity_{family}.png')) > 1000
  assert open(os.path.join(out, 'capacity.md')).read().splitlines() == text


def test_a_sweep_without_query_accuracy_is_refused(tmp_path):
  with open(tmp_path / 'summary.json', 'w') as f:
    json.dump([{'name': 'x', 'status': 'done', 'test_accuracy': 0.5}], f)
  with pytest.raises(checks.ConfigError, match='no finished point has a '
                     'test_query_accuracy'):
    capacity_map.write_maps(str(tmp_path), str(tmp_path / 'out'))
