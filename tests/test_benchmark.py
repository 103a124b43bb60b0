"""The benchmark suite's quick mode (a smaller test variant of it): files,
costs and scaling are consistent."""

import dataclasses
import json
import os

import pytest

from experiments.benchmark import cases as cases
from experiments.benchmark import machine as benchmark_machine
from experiments.benchmark import report as benchmark_report
from experiments.benchmark import suite as benchmarks

# QUICK with one layer per model and one train-step family: every group,
# case and row kind still runs (compile_vs_depth compiles its second depth).
CONFIG = dataclasses.replace(
    benchmarks.QUICK,
    sizes=dataclasses.replace(benchmarks.QUICK.sizes, num_layers=1),
    train_step_families=('simmim',))

FILES = ('benchmark.json', 'benchmark.md', 'time_vs_length.png',
         'memory_vs_length.png', 'cache_vs_length.png')


@pytest.fixture(scope='module')
def out_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('benchmark'))
  benchmarks.run(CONFIG, path, command=['test_benchmark'])
  return path


@pytest.fixture(scope='module')
def report(out_dir):
  with open(os.path.join(out_dir, 'benchmark.json')) as f:
    return json.load(f)


def _flops(report, name, mode):
  """{length: XLA FLOPs} of one JAX case."""
  return {r['length']: r['flops'] for r in report['rows']
          if r['framework'] == 'jax' and r['name'] == name
          and r['mode'] == mode}


def test_writes_every_file(out_dir):
  for name in FILES:
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name


def test_every_row_is_costed_and_every_run_is_timed(report):
  assert report['ceiling']['gflops_per_s'] > 0
  for row in report['rows']:
    assert row['flops'] > 0, row
    if row['framework'] == 'jax':
      assert row['peak_bytes'] > 0, row
    if row['seconds'] is not None:
      assert row['seconds'] > 0 and row['gflops_per_s'] > 0, row
  assert all(r['seconds'] is not None for r in report['rows']
             if r['framework'] == 'jax'), 'quick cases fit any budget'


def test_segment_attention_flops_double_with_length(report):
  for mode in (cases.FORWARD, cases.BACKWARD):
    flops = _flops(report, 'segment_attention', mode)
    assert 1.9 <= flops[512] / flops[256] <= 2.1, (mode, flops)


def test_full_attention_flops_quadruple_with_length(report):
  for mode in (cases.FORWARD, cases.BACKWARD):
    flops = _flops(report, 'full_attention', mode)
    assert 3.6 <= flops[512] / flops[256] <= 4.4, (mode, flops)


def test_backward_costs_more_than_forward(report):
  names = {r['name'] for r in report['rows'] if r['group'] != 'train_step'}
  for name in names:
    forward = _flops(report, name, cases.FORWARD)
    backward = _flops(report, name, cases.BACKWARD)
    for length, flops in forward.items():
      assert backward[length] > flops, (name, length)


def test_torch_rows_are_measured_or_skipped(report):
  rows = [r for r in report['rows'] if r['framework'] == 'torch']
  assert {r['name'] for r in rows} == set(cases.TORCH_TWINS)
  torch, _ = benchmark_machine.import_torch()
  for row in rows:
    assert (row['seconds'] is None) == bool(row['skipped']), row
    if torch is None:
      assert row['skipped'].startswith('torch not importable'), row
  if torch is not None:
    assert any(r['seconds'] for r in rows)


def test_train_step_and_compile_rows(report):
  steps = [r for r in report['rows'] if r['group'] == 'train_step']
  assert {r['name'] for r in steps} == {
      f'Classifier/{family}' for family in CONFIG.train_step_families}
  assert all(r['tokens_per_s'] > 0 for r in steps)
  for row in steps:  # maxtext's count: matmuls only, so below XLA's
    assert 0 < row['model_flops'] < row['flops'], row
    assert row['mfu'] == pytest.approx(
        row['model_flops'] / row['seconds'] / (
            report['ceiling']['gflops_per_s'] * 1e9))
  depths = [r['num_layers'] for r in report['compile_vs_depth']]
  assert depths == list(CONFIG.compile_depths)
  assert CONFIG.sizes.num_layers in depths and len(depths) > 1
  for row in report['compile_vs_depth']:
    # Cold: compiled by XLA; warm: loaded from the persistent cache.
    assert not row['cache_hit'] and row['xla_compile_seconds'] > 0, row
    assert row['warm_cache_hit'] and row['warm_compile_seconds'] > 0
    assert row['warm_xla_compile_seconds'] < row['xla_compile_seconds']


def test_decode_cache_grows_with_context_only_for_the_transformer(report):
  decode = {(r['name'], r['length']): r for r in report['rows']
            if r['group'] == 'decode'}
  assert {name for name, _ in decode} == {'CausalLM/simmim',
                                          'CausalLM/transformer'}
  assert all(r['tokens_per_s'] > 0 for r in decode.values())
  growth = {name: decode[name, 512]['cache_bytes']
            / decode[name, 256]['cache_bytes'] for name, _ in decode}
  assert growth['CausalLM/transformer'] == 2.0  # keys and values per position
  assert growth['CausalLM/simmim'] < 1.5  # one state per segment


def test_segment_attention_slopes_meet_target(report):
  for entry in report['slopes']:
    if entry['name'] == 'segment_attention':
      assert entry['meets_target'], entry


def test_markdown_names_every_case(out_dir, report):
  with open(os.path.join(out_dir, 'benchmark.md')) as f:
    markdown = f.read()
  names = list(cases.op_workloads(cases.Sizes(), 1024)) + list(
      cases.TORCH_TWINS) + [r['name'] for r in report['rows']]
  for name in names:
    assert f'| {name} |' in markdown, name
  assert markdown == benchmark_report.to_markdown(report)


def test_predicted_seconds_scales_the_last_run_by_flops():
  assert benchmarks.predicted_seconds(4e9, 1e9, None) == 4.0
  shorter = {'seconds': 3.0, 'flops': 1e9}
  assert benchmarks.predicted_seconds(4e9, 1e9, shorter) == 12.0
  assert benchmarks.predicted_seconds(4e9, 1e8, shorter) == 40.0


def test_cases_over_budget_are_costed_but_not_run():
  config = dataclasses.replace(benchmarks.QUICK, memory_budget_gib=1e-6)
  case = cases.jax_cases(config.sizes, (256,), (), ())[0]
  rows = benchmarks.measure_case(case, config, 1e9, dict.fromkeys(case.modes))
  assert [r['mode'] for r in rows] == [cases.FORWARD, cases.BACKWARD]
  for row in rows:
    assert row['flops'] > 0 and row['peak_bytes'] > 0, row
    assert row['seconds'] is None and 'budget' in row['skipped'], row
  slow = dataclasses.replace(benchmarks.QUICK, max_seconds_per_call=1e-12)
  rows = benchmarks.measure_case(case, slow, 1e9, dict.fromkeys(case.modes))
  assert all('predicted' in r['skipped'] for r in rows), rows


def test_no_compile_depths_leave_the_compile_section_out(report):
  config = dataclasses.replace(benchmarks.QUICK, compile_depths=())
  assert benchmarks.compile_vs_depth(config) == []
  with_section = benchmark_report.to_markdown(report)
  assert '## Train-step compile time vs depth' in with_section
  without = benchmark_report.to_markdown({**report, 'compile_vs_depth': []})
  assert '## Train-step compile time vs depth' not in without
  assert without.count('## ') == with_section.count('## ') - 1


def test_unknown_group_is_refused_before_any_work(tmp_path):
  config = dataclasses.replace(benchmarks.QUICK, groups=('op', 'layers'))
  with pytest.raises(ValueError,
                     match=r"unknown benchmark groups \['layers'\]"):
    benchmarks.run(config, str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_op_rows_hold_their_share_of_the_measured_bandwidth(report):
  bandwidth = report['bandwidth']['gb_per_s'] * 1e9
  assert bandwidth > 0
  ran = [r for r in report['rows'] if r['framework'] == 'jax'
         and r['group'] == 'op' and r['seconds']]
  assert ran
  for row in ran:
    assert row['bandwidth_fraction'] == pytest.approx(
        row['bytes_accessed'] / row['seconds'] / bandwidth), row


def test_training_flops_count_attention_over_segments_or_everything():
  sizes = cases.Sizes()
  n, l, d = 8192, sizes.segment_len, sizes.d_model
  simmim, transformer = (cases.training_matmul_flops(sizes, family, n, 2)
                         for family in ('simmim', 'transformer'))
  # Only the attention term differs: 4 n l d against 4 n n d, per layer
  # and pass (3: forward and a backward of twice its cost).
  assert transformer - simmim == 3 * 2 * 4 * n * (n - l) * d
  assert cases.training_matmul_flops(sizes, 'transformer', n, 2,
                                     causal=True) == transformer - (
                                         3 * 2 * 2 * n * n * d)


def test_the_device_preset_runs_only_segment_attention_ops():
  config = benchmarks.DEVICE
  assert config.sizes.dtype == 'bfloat16' and config.lengths == (8192, 32768)
  assert config.op_names == ('segment_attention',)
  assert set(config.train_step_families) == {'simmim', 'transformer'}
