"""The benchmark suite: SimMIM's ops, layers, train step and decoding step
against full attention and PyTorch, from 1k to 32k tokens, in one run.

  from experiments.benchmark import report, suite
  results = suite.run(suite.BenchmarkConfig(), 'runs/benchmark')
  print(report.to_markdown(results))

For every case (see benchmark_cases.py): XLA's FLOP count and compiled peak
memory (nothing executed), compile seconds, and the median time of `repeats`
calls after one warm-up call. Achieved GFLOP/s is compared with a large
matmul's, measured in the same run (the machine's ceiling). A case whose
compiled peak exceeds the memory budget, or whose predicted time per call
exceeds `max_seconds_per_call`, is costed but not run (time None).
"""

import dataclasses
import functools
import json
import math
import os
import sys
from typing import Any, Optional, Sequence

from absl import logging
import jax

from experiments.benchmark import cases as cases
from experiments.benchmark import compile_time
from experiments.benchmark import machine
from experiments.benchmark import report as benchmark_report
from experiments.benchmark.report import Row
from simmim_jax.cost import compile_with_cost
from simmim_jax.cost import median_seconds
from simmim_jax.models.model_config import FAMILIES


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What one run measures, and how hard it may push the machine."""
  sizes: cases.Sizes = cases.Sizes()
  lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)
  groups: tuple[str, ...] = cases.GROUPS  # which of 'op', 'layer', 'train_step'
  op_names: Optional[tuple[str, ...]] = None  # the ops run (None: all)
  train_step_lengths: Optional[tuple[int, ...]] = None  # None: `lengths`
  train_step_families: tuple[str, ...] = FAMILIES
  repeats: int = 5                 # timed calls per case, after a warm-up
  ceiling_size: int = 4096         # n of the [n, n] @ [n, n] ceiling matmul
  bandwidth_bytes: int = 2**28     # float32 bytes of the bandwidth pass
  compile_depths: tuple[int, ...] = (2, 6, 12)  # train-step compile vs depth
  compile_families: tuple[str, ...] = FAMILIES  # ... of these families
  decode_lengths: Optional[tuple[int, ...]] = None  # None: `lengths`
  decode_kinds: tuple[tuple[str, str], ...] = cases.DECODE_KINDS
  memory_budget_gib: float = 12.0  # larger compiled peaks are not run
  max_seconds_per_call: float = 15.0  # nor those predicted slower per call


QUICK = BenchmarkConfig(
    sizes=cases.Sizes(num_heads=2, head_dim=16, segment_len=64,
                      num_templates=4, mlp_dim=64),
    lengths=(256, 512), train_step_lengths=(256,),
    train_step_families=('simmim', 'transformer'), repeats=1,
    ceiling_size=256, bandwidth_bytes=2**22, compile_depths=(1, 2),
    compile_families=('simmim',),
    decode_kinds=(('simmim', 'softmax'), ('transformer', 'softmax')))

# An accelerator in a few minutes, compile included (`benchmark --device`):
# bf16 segment attention (and its PyTorch flash peer) forward+backward and
# the simmim and transformer train steps at 8k and 32k tokens.
DEVICE = BenchmarkConfig(
    sizes=cases.Sizes(dtype='bfloat16'), lengths=(8192, 32768),
    groups=('op', 'train_step'), op_names=('segment_attention',),
    train_step_families=('simmim', 'transformer'),
    repeats=5, ceiling_size=8192, bandwidth_bytes=2**30, compile_depths=(2,),
    compile_families=('simmim',), memory_budget_gib=60.0,
    max_seconds_per_call=5.0)


def predicted_seconds(flops: float, ceiling_flops: float,
                      previous: Optional[Row]) -> float:
  """Seconds a call should take: its FLOPs at the ceiling, or, if longer,
  the time of the same case at a shorter length (`previous`, a row that
  ran) scaled by the FLOP ratio."""
  at_ceiling = flops / ceiling_flops
  if previous is None:
    return at_ceiling
  return max(at_ceiling, previous['seconds'] * flops / previous['flops'])


def skip_reason(peak_bytes: Optional[float], predicted: float,
                config: BenchmarkConfig) -> Optional[str]:
  """Why a case is not run, or None to run it (unknown peak: not checked)."""
  if peak_bytes is not None and peak_bytes > config.memory_budget_gib * 2**30:
    return (f'peak {peak_bytes / 2**30:.1f} GiB > '
            f'{config.memory_budget_gib:g} GiB budget')
  if predicted > config.max_seconds_per_call:
    return (f'{predicted:.1f} s/call predicted > '
            f'{config.max_seconds_per_call:g} s')
  return None


def make_row(framework: str, group: str, name: str, mode: str, length: int, *,
             flops: float, peak_bytes: Optional[float],
             compile_seconds: Optional[float], predicted: float,
             seconds: Optional[float], skipped: Optional[str],
             ceiling_flops: float,
             cache_bytes: Optional[int] = None,
             bytes_accessed: Optional[float] = None,
             bandwidth: Optional[float] = None,
             model_flops: Optional[float] = None) -> Row:
  """One result; rates are None when the case was not run. With XLA's
  `bytes_accessed` and the measured `bandwidth` (bytes/s), the share of the
  memory roofline; with `model_flops` (maxtext's count), the MFU against
  the measured matmul ceiling."""
  row = {'framework': framework, 'group': group, 'name': name, 'mode': mode,
         'length': length, 'flops': flops, 'peak_bytes': peak_bytes,
         'compile_seconds': compile_seconds, 'predicted_seconds': predicted,
         'seconds': seconds, 'skipped': skipped, 'gflops_per_s': None,
         'ceiling_fraction': None, 'bytes_accessed': bytes_accessed,
         'bandwidth_fraction': None, 'model_flops': model_flops, 'mfu': None}
  if seconds is not None:
    row['gflops_per_s'] = flops / seconds / 1e9
    row['ceiling_fraction'] = flops / seconds / ceiling_flops
    if bytes_accessed and bandwidth:
      row['bandwidth_fraction'] = bytes_accessed / seconds / bandwidth
    if model_flops:
      row['mfu'] = model_flops / seconds / ceiling_flops
  if mode == cases.TRAIN_STEP:
    row['tokens_per_s'] = None if seconds is None else length / seconds
  if mode == cases.DECODE_STEP:  # one token per call
    row['tokens_per_s'] = None if seconds is None else 1 / seconds
    row['cache_bytes'] = cache_bytes
  return row


def measure_case(case: cases.Case, config: BenchmarkConfig,
                 ceiling_flops: float,
                 previous: dict[str, Optional[Row]],
                 bandwidth: Optional[float] = None) -> list[Row]:
  """Costs each mode of `case`, then times those `skip_reason` lets run.

  `previous[mode]`: the row of that mode at the last shorter length that ran
  (or None), for `predicted_seconds`.
  """
  make_args = functools.partial(cases.mode_args, case)
  specs = jax.eval_shape(make_args)
  # A carried argument (the decoding cache) is donated, as a decoding loop
  # updates it in place; the program costed is the one timed.
  donated = () if case.carried is None else (case.carried,)
  compiled = {mode: compile_with_cost(fn, *specs[mode],
                                      donate_argnums=donated)
              for mode, fn in case.modes.items()}
  costs = {mode: cost for mode, (_, cost) in compiled.items()}
  predicted = {mode: predicted_seconds(cost['flops'], ceiling_flops,
                                       previous[mode])
               for mode, cost in costs.items()}
  skipped = {mode: skip_reason(cost['peak_bytes'], predicted[mode], config)
             for mode, cost in costs.items()}
  seconds = dict.fromkeys(case.modes)
  if None in skipped.values():
    args = make_args()
    for mode, (program, _) in compiled.items():
      if skipped[mode] is None:
        # The specs' tree (a TrainState's metadata holds its optimizer
        # object, which make_args builds anew), as the program expects.
        mode_args = jax.tree.unflatten(jax.tree.structure(specs[mode]),
                                       jax.tree.leaves(args[mode]))
        seconds[mode] = median_seconds(
            _timed_call(program, mode_args, case.carried), config.repeats)
  cache_bytes = None
  if case.carried is not None:
    cache_bytes = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in
                      jax.tree.leaves(specs[next(iter(case.modes))][
                          case.carried]))
  rows = []
  for mode, cost in costs.items():
    logging.info('%s %s %d: %.4g GFLOP, %s', case.name, mode, case.length,
                 cost['flops'] / 1e9, skipped[mode] or f'{seconds[mode]:.4g} s')
    rows.append(make_row(
        'jax', case.group, case.name, mode, case.length, flops=cost['flops'],
        peak_bytes=cost['peak_bytes'], compile_seconds=cost['compile_seconds'],
        predicted=predicted[mode], seconds=seconds[mode],
        skipped=skipped[mode], ceiling_flops=ceiling_flops,
        cache_bytes=cache_bytes, bytes_accessed=cost['bytes_accessed'],
        bandwidth=bandwidth,
        model_flops=case.model_flops if mode == cases.TRAIN_STEP else None))
  return rows


def _timed_call(program, args, carried: Optional[int]):
  """The compiled program on args, as a call of no arguments. A carried
  (donated) argument is replaced by each call's new value."""
  if carried is None:
    return functools.partial(program, *args)
  args = list(args)

  def call():
    out, args[carried] = program(*args)
    return out
  return call


def measure_cases(all_cases: Sequence[cases.Case], config: BenchmarkConfig,
                  ceiling_flops: float,
                  bandwidth: Optional[float] = None) -> list[Row]:
  """`measure_case` over cases given shortest length first per name."""
  rows = []
  last_run: dict[tuple[str, str], Row] = {}
  for case in all_cases:
    previous = {mode: last_run.get((case.name, mode)) for mode in case.modes}
    for row in measure_case(case, config, ceiling_flops, previous,
                            bandwidth):
      rows.append(row)
      if row['seconds'] is not None:
        last_run[case.name, row['mode']] = row
  return rows


def torch_rows(torch: Any, unavailable: Optional[str], config: BenchmarkConfig,
               jax_rows: Sequence[Row], ceiling_flops: float,
               bandwidth: Optional[float] = None) -> list[Row]:
  """The PyTorch peers, each credited with its JAX twin's XLA FLOPs and
  bytes; every row is marked skipped when torch is `unavailable`."""
  if torch is not None:
    torch.set_num_threads(machine.available_cpus())
  twins = {(r['name'], r['mode'], r['length']): r for r in jax_rows}
  rows = []
  if 'op' not in config.groups:
    return rows
  for name, twin in cases.TORCH_TWINS.items():
    if config.op_names is not None and twin not in config.op_names:
      continue
    for mode in (cases.FORWARD, cases.BACKWARD):
      previous = None
      for length in config.lengths:
        flops = twins[twin, mode, length]['flops']
        moved = twins[twin, mode, length].get('bytes_accessed')
        predicted = predicted_seconds(flops, ceiling_flops, previous)
        skipped = unavailable or skip_reason(None, predicted, config)
        seconds = None
        if skipped is None:
          call = cases.torch_calls(torch, config.sizes, name, length,
                                   machine.torch_device(torch))[mode]
          seconds = median_seconds(call, config.repeats)
        rows.append(make_row(
            'torch', 'op', name, mode, length, flops=flops, peak_bytes=None,
            compile_seconds=None, predicted=predicted, seconds=seconds,
            skipped=skipped, ceiling_flops=ceiling_flops,
            bytes_accessed=moved, bandwidth=bandwidth))
        if seconds is not None:
          previous = rows[-1]
  return rows


def compile_vs_depth(config: BenchmarkConfig) -> list[Row]:
  """The train step's compile time, cold and warm, at each of the config's
  depths and the first length (none unless the train step is measured)."""
  if 'train_step' not in config.groups or not config.compile_depths:
    return []
  return compile_time.compile_vs_depth(config.sizes, config.compile_families,
                                       config.compile_depths,
                                       config.lengths[0])


def run(config: BenchmarkConfig, out_dir: str,
        command: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the suite; writes benchmark.json, benchmark.md and the two plots
  into `out_dir`, and returns the report that benchmark.json holds."""
  unknown = set(config.groups) - set(cases.GROUPS)
  if unknown:
    raise ValueError(f'unknown benchmark groups {sorted(unknown)}: choose '
                     f'from {cases.GROUPS}')
  os.makedirs(out_dir, exist_ok=True)
  report = _measure(config, command)
  with open(os.path.join(out_dir, 'benchmark.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, 'benchmark.md'), 'w') as f:
    f.write(benchmark_report.to_markdown(report))
  benchmark_report.save_plots(report['rows'], out_dir)
  return report


def _measure(config: BenchmarkConfig,
             command: Optional[Sequence[str]]) -> dict[str, Any]:
  torch, unavailable = machine.import_torch()
  ceiling = machine.measure_ceiling(
      config.ceiling_size, config.sizes.compute_dtype, config.repeats)
  ceiling_flops = ceiling['gflops_per_s'] * 1e9
  bandwidth = machine.measure_bandwidth(config.bandwidth_bytes, config.repeats)
  all_cases = [case for case in cases.jax_cases(
      config.sizes, config.lengths, config.train_step_lengths or config.lengths,
      config.train_step_families, config.decode_lengths or config.lengths,
      config.decode_kinds) if case.group in config.groups
      and (case.group != 'op' or config.op_names is None
           or case.name in config.op_names)]
  rows = measure_cases(all_cases, config, ceiling_flops,
                       bandwidth['gb_per_s'] * 1e9)
  rows += torch_rows(torch, unavailable, config, rows, ceiling_flops,
                     bandwidth['gb_per_s'] * 1e9)
  return {
      'machine': machine.describe(
          torch, sys.argv if command is None else command),
      'config': dataclasses.asdict(config), 'ceiling': ceiling,
      'bandwidth': bandwidth, 'rows': rows,
      'compile_vs_depth': compile_vs_depth(config),
      'slopes': benchmark_report.slopes(rows)}
