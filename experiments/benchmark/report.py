"""The benchmark report: log-log slopes, markdown tables and plots.

Reads the report dict that `benchmarks.run` builds (and benchmark.json holds):
rows of cases, the matmul ceiling, compile time vs depth, the machine.
"""

import math
import os
from typing import Any, Optional, Sequence

from experiments.benchmark import cases as cases

GROUPS = cases.GROUPS
# Linear in length by design: the target is a log-log slope <= 1.1.
SIMMIM_CASES = ('segment_attention', 'segment_state_attention',
                'segment_template_attention', 'SMIBlock/simmim',
                'Classifier/simmim')
SLOPE_TARGET = 1.1
Row = dict[str, Any]


def _log_slope(first: Row, last: Row, key: str) -> Optional[float]:
  """d log(row[key]) / d log(length) between two rows."""
  if first[key] is None or last[key] is None or first is last:
    return None
  return (math.log(last[key] / first[key])
          / math.log(last['length'] / first['length']))


def slopes(rows: Sequence[Row]) -> list[Row]:
  """Log-log slopes vs length of each JAX case's FLOPs and peak memory
  (smallest to largest length) and time (over the lengths that ran)."""
  series: dict[tuple[str, str, str], list[Row]] = {}
  for row in rows:
    if row['framework'] == 'jax':
      series.setdefault((row['group'], row['name'], row['mode']),
                        []).append(row)
  out = []
  for (group, name, mode), members in series.items():
    members = sorted(members, key=lambda r: r['length'])
    timed = [r for r in members if r['seconds'] is not None]
    entry = {'group': group, 'name': name, 'mode': mode,
             'lengths': [members[0]['length'], members[-1]['length']],
             'flops_slope': _log_slope(members[0], members[-1], 'flops'),
             'peak_slope': _log_slope(members[0], members[-1], 'peak_bytes'),
             'time_lengths': [timed[0]['length'], timed[-1]['length']]
                             if timed else None,
             'time_slope': (_log_slope(timed[0], timed[-1], 'seconds')
                            if timed else None),
             'meets_target': None}
    if name in SIMMIM_CASES and entry['flops_slope'] is not None:
      entry['meets_target'] = max(entry['flops_slope'],
                                  entry['peak_slope']) <= SLOPE_TARGET
    out.append(entry)
  return out


def _fmt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value * scale, spec)


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
  """A markdown table; columns after the first two are right-aligned."""
  align = ['---' if i < 2 else '---:' for i in range(len(headers))]
  return '\n'.join('| ' + ' | '.join(cells) + ' |'
                   for cells in [headers, align, *lines])


def _ordered(rows: Sequence[Row]) -> list[Row]:
  """By case (in order of first appearance), forward first, then length."""
  first: dict[str, int] = {}
  for row in rows:
    first.setdefault(row['name'], len(first))
  return sorted(rows, key=lambda r: (first[r['name']],
                                     r['mode'] != cases.FORWARD, r['length']))


def _case_table(rows: Sequence[Row]) -> str:
  """Cost, time and rates of every row (of one group)."""
  train = rows[0]['mode'] in (cases.TRAIN_STEP, cases.DECODE_STEP)
  decode = rows[0]['mode'] == cases.DECODE_STEP
  headers = ['case', 'pass', 'length', 'GFLOP', 'peak MiB', 'compile s',
             'median ms', 'GFLOP/s', '% of ceiling', '% of bandwidth']
  headers += ['tokens/s', 'MFU %'] if train else []
  headers += ['cache MiB'] if decode else []
  headers += ['note']
  lines = []
  for r in _ordered(rows):
    cells = [r['name'], r['mode'], str(r['length']),
             _fmt(r['flops'], '.4g', 1e-9),
             _fmt(r['peak_bytes'], '.1f', 2**-20),
             _fmt(r['compile_seconds'], '.2f'),
             _fmt(r['seconds'], '.4g', 1e3), _fmt(r['gflops_per_s'], '.1f'),
             _fmt(r['ceiling_fraction'], '.1f', 100),
             _fmt(r.get('bandwidth_fraction'), '.1f', 100)]
    if train:
      cells += [_fmt(r['tokens_per_s'], '.0f'), _fmt(r.get('mfu'), '.1f', 100)]
    if decode:
      cells.append(_fmt(r['cache_bytes'], '.4g', 2**-20))
    cells.append(f"not run: {r['skipped']}" if r['skipped'] else '')
    lines.append(cells)
  return _table(headers, lines)


def _op_notes(sizes: dict[str, Any]) -> str:
  """What each op row runs."""
  seg, window = sizes['segment_len'], cases.Sizes(**sizes).window
  return '\n'.join([
      f"- `segment_attention`: `simmim_jax.segment_attention`, segment_len "
      f"{seg}.",
      f"- `segment_state_attention`: on the length / {seg} segment states of "
      f"width {sizes['num_heads'] * sizes['head_dim']}.",
      f"- `segment_template_attention`: `assign_templates` + "
      f"`segment_template_attention`, {sizes['num_templates']} templates.",
      "- `full_attention`: `simmim_jax.full_attention`, what the transformer "
      "family runs (on CPU the segment kernel with one segment).",
      "- `dot_product_attention`: the same attention through "
      "`jax.nn.dot_product_attention(implementation='xla')`.",
      f"- `sliding_window_attention`: the latter with local_window_size="
      f"{window} ({seg} keys per query); XLA masks the full score matrix, so "
      "its cost is quadratic.",
      "- `flax_mha`: `flax.linen.MultiHeadDotProductAttention`, q/k/v/out "
      "projections included.",
      "- `torch_sdpa_segments` / `torch_sdpa_full`: PyTorch's "
      f"`scaled_dot_product_attention` on [length / {seg}, heads, {seg}, "
      "head_dim] / [1, heads, length, head_dim]; GFLOP are their JAX twin's "
      "(segment_attention / full_attention); peak memory is not measured.",
      "- forward+backward: gradients of sum(out * fixed random cotangent) "
      "w.r.t. every float input (and parameters)."])


def _remat_note(remat) -> str:
  """The sizes line's remat clause; reports made before the policies had
  names hold True / False."""
  policy = {True: 'full', False: 'none', None: 'none'}.get(remat, remat)
  return '' if policy == 'none' else f', blocks rematerialised ({policy})'


def _machine(report: dict[str, Any]) -> str:
  """The command, machine and settings of the run."""
  m, config = report['machine'], report['config']
  sizes = config['sizes']
  env = ', '.join(f'{k}={v}' for k, v in m['env'].items())
  tuned = ', '.join(f'{k}={v}' for k, v in
                    m.get('malloc_set_on_import', {}).items()) or 'none'
  versions = ', '.join(f'{k} {v}' for k, v in m['versions'].items())
  return (
      f"`{m['command']}`\n\n"
      f"- devices: {', '.join(m['devices'])} ({m['platform']})\n"
      f"- cpu: {m['cpu']}, {m['cpus_available']} of {m['cpu_count']} cores "
      f"available; torch device: {m['torch_device']}, threads: "
      f"{m['torch_threads']}\n- {versions}\n"
      f"- env: {env}\n- malloc set by simmim_jax on import: {tuned}\n"
      f"- {m['os']}\n\n"
      f"Batch 1, {sizes['dtype']}, {sizes['num_heads']} heads of "
      f"{sizes['head_dim']} (d_model "
      f"{sizes['num_heads'] * sizes['head_dim']}), segment_len "
      f"{sizes['segment_len']}, mlp_dim {sizes['mlp_dim']}"
      f"{_remat_note(sizes.get('remat'))}; median of "
      f"{config['repeats']} calls after a warm-up call. Not run (time '-'): "
      f"compiled peak > {config['memory_budget_gib']:g} GiB, or predicted "
      f"time per call > {config['max_seconds_per_call']:g} s (FLOPs at the "
      "ceiling, or the time at the last shorter length scaled by FLOPs, "
      "whichever is longer).")


def _ceiling(ceiling: dict[str, Any]) -> str:
  c = ceiling
  return _table(['matmul', 'dtype', 'GFLOP', 'XLA GFLOP', 'median ms',
                 'GFLOP/s'],
                [[f"{c['size']}^3", c['dtype'], f"{c['flops'] / 1e9:.4g}",
                  f"{c['xla_flops'] / 1e9:.4g}", f"{c['seconds'] * 1e3:.4g}",
                  f"{c['gflops_per_s']:.1f}"]])


def _compile_table(compile_rows: Sequence[Row]) -> str:
  def warm(r):
    if r.get('warm_compile_seconds') is None:  # reports made before
      return '-'
    return (f"{r['warm_compile_seconds']:.2f} "
            f"({'cache hit' if r['warm_cache_hit'] else 'compiled'})")

  return _table(
      ['model', 'layers', 'length', 'cold s (XLA compile s)',
       'warm s (persistent cache)', 'GFLOP', 'peak MiB'],
      [[r['name'], str(r['num_layers']), str(r['length']),
        f"{r['compile_seconds']:.2f}"
        + (f" ({r['xla_compile_seconds']:.2f})"
           if r.get('xla_compile_seconds') is not None else ''),
        warm(r), f"{r['flops'] / 1e9:.4g}",
        f"{r['peak_bytes'] / 2**20:.1f}"] for r in compile_rows])


def _slope_table(slope_rows: Sequence[Row]) -> str:
  lines = []
  for s in slope_rows:
    time = _fmt(s['time_slope'], '.2f')
    if s['time_slope'] is not None:
      time += ' ({}-{})'.format(*s['time_lengths'])
    lines.append([s['name'], s['mode'], '{}-{}'.format(*s['lengths']),
                  _fmt(s['flops_slope'], '.2f'), _fmt(s['peak_slope'], '.2f'),
                  time, {None: '', True: 'yes', False: 'no'}[
                      s['meets_target']]])
  return _table(['case', 'pass', 'lengths', 'FLOPs', 'peak memory',
                 'time (lengths run)', f'<= {SLOPE_TARGET}'], lines)


def to_markdown(report: dict[str, Any]) -> str:
  """The report as markdown: machine, ceiling, one table per group, compile
  time vs depth, slopes."""
  sizes = report['config']['sizes']
  by_group = {g: [r for r in report['rows'] if r['group'] == g]
              for g in GROUPS}
  sections = ['# Benchmark', _machine(report),
              '## Ceiling', _ceiling(report['ceiling'])]
  if report.get('bandwidth'):  # reports made before had none
    b = report['bandwidth']
    sections.append(
        f"Memory bandwidth: {b['gb_per_s']:.1f} GB/s (x * 2 over "
        f"{b['bytes'] / 2 ** 31:.3g} GiB of float32, read and written). "
        "'% of bandwidth' is XLA's bytes accessed (a loop body counted once) "
        "per second over it; 'MFU %' is the train step's matmul FLOPs as "
        "maxtext counts them (projections, MLP, attention 4 n l d a layer, "
        "backward twice the forward) per second over the matmul ceiling.")
  if by_group['op']:  # a run may leave groups out (BenchmarkConfig.groups)
    sections += ['## Ops', _op_notes(sizes), _case_table(by_group['op'])]
  if by_group['layer']:
    sections += ['## Layers (SMIBlock)', _case_table(by_group['layer'])]
  if by_group['train_step']:
    sections += [
        f"## Train step (Classifier, {sizes['num_layers']} layers, AdamW)",
        _case_table(by_group['train_step'])]
  if report['compile_vs_depth']:  # --compile_depths= leaves it out
    sections += ['## Train-step compile time vs depth',
                 _compile_table(report['compile_vs_depth'])]
  if by_group['decode']:
    sections += [
        f"## Decoding step (CausalLM, {sizes['num_layers']} layers, one "
        'token at the last position of a full cache, batch 1)',
        _case_table(by_group['decode'])]
  sections += ['## Log-log slopes vs length (target for SimMIM cases: '
               f'<= {SLOPE_TARGET})', _slope_table(report['slopes'])]
  return '\n\n'.join(sections) + '\n'


def save_plots(rows: Sequence[Row], out_dir: str) -> None:
  """time_vs_length.png (cases that ran), memory_vs_length.png (compiled
  peaks of the JAX cases) and, with decoding cases, cache_vs_length.png:
  log-log, one panel per group, one colour per case, dashed for
  forward+backward."""
  # matplotlib is an optional dependency (the 'test' and 'notebooks' extras).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  for filename, key, label in (
      ('time_vs_length.png', 'seconds', 'median seconds per call'),
      ('memory_vs_length.png', 'peak_bytes', 'compiled peak bytes'),
      ('cache_vs_length.png', 'cache_bytes', 'decoding cache bytes')):
    groups = [g for g in GROUPS if any(r['group'] == g and r.get(key)
                                       is not None for r in rows)]
    if not groups:  # e.g. no decoding cases: no cache plot
      continue
    figure = Figure(figsize=(6 * len(groups), 8), layout='constrained')
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for axis, group in zip(axes, groups):
      series: dict[tuple[str, str], list[Row]] = {}
      for r in _ordered([r for r in rows if r['group'] == group]):
        if r[key] is not None:
          series.setdefault((r['name'], r['mode']), []).append(r)
      colours = {name: f'C{i % 10}' for i, name in
                 enumerate(dict.fromkeys(name for name, _ in series))}
      for (name, mode), members in series.items():
        axis.plot([r['length'] for r in members], [r[key] for r in members],
                  marker='o', color=colours[name], label=f'{name} {mode}',
                  linestyle='--' if mode == cases.BACKWARD else '-')
      axis.set_xscale('log', base=2)
      axis.set_yscale('log')
      axis.set(title=group, xlabel='sequence length', ylabel=label)
      axis.legend(fontsize=7, loc='upper center', ncols=2,
                  bbox_to_anchor=(0.5, -0.1))
    figure.savefig(os.path.join(out_dir, filename), dpi=100)
