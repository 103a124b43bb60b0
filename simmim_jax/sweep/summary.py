"""A sweep's summary: one row per point, seeds grouped, plots.

Rows come from each point's run directory (its results, metrics and config;
see training/run_dir.py), so a summary can be built from points run
anywhere:
  DIR/summary.{csv,md,json}   one row per point
  DIR/summary_grouped.md      points that differ only in `seed`: mean +- std
  DIR/summary_<metric>.png    the grouped metric per variant, with error bars
  DIR/curves.png              eval learning curves of every point
"""

import csv
import json
import math
import os
import textwrap
from typing import Any, Optional, Sequence

import numpy as np

from simmim_jax.training import experiment_config
from simmim_jax.training import metrics as metrics_lib
from simmim_jax.training import run_dir

SPEC_FILE = 'sweep.json'
# Numeric columns averaged over seeds, in the order the tables show them.
GROUPED_COLUMNS = ('test_accuracy', 'test_query_accuracy',
                   'test_bits_per_byte', 'best_value',
                   'final_eval_accuracy', 'final_eval_query_accuracy',
                   'final_eval_bits_per_byte',
                   'steps_to_target', 'train_seconds_to_target',
                   'total_train_seconds_to_target', 'pretrain_train_seconds',
                   'train_seconds', 'step_seconds', 'tokens_per_second',
                   'forward_gflops',
                   'parameters')


def point_row(point, workdir: str, status: str,
              target: Optional[tuple[str, float]] = None) -> dict[str, Any]:
  """The summary row of one point (`point`: a sweep.Point)."""
  directory = os.path.join(workdir, point.name)
  row = {'name': point.name, **{k: v for k, v in point.overrides.items()},
         'status': status, 'error': ''}
  if point.needs:
    # Named by the run it starts from, less its seed, so seeds group.
    row['init_from'] = '@' + point.source_group
  status_path = os.path.join(directory, 'sweep_status.json')
  if status == 'failed' and os.path.exists(status_path):
    with open(status_path) as f:
      row['error'] = json.load(f).get('error', '')
  records = metrics_lib.read_metrics(directory)
  train = [r for r in records if 'step_seconds' in r]  # any objective
  if train:
    row['last_step'] = train[-1]['step']
    row['train_seconds'] = _train_seconds(train, math.inf)
    steady = train[1:] or train  # the first window includes compilation
    row['step_seconds'] = float(np.median([r['step_seconds'] for r in steady]))
    row['tokens_per_second'] = float(np.median(
        [r['tokens_per_second'] for r in steady]))
  if target is not None:
    metric, value = target
    mode = (run_dir.load_config(directory) or {}).get('best_mode', 'max')
    reached = [r['step'] for r in records if metric in r and (
        r[metric] >= value if mode == 'max' else r[metric] <= value)]
    row['steps_to_target'] = reached[0] if reached else None
    row['train_seconds_to_target'] = (_train_seconds(train, reached[0])
                                      if reached else None)
  if point.needs:  # the run it started from counts in its compute
    source = [r for r in metrics_lib.read_metrics(
        os.path.join(workdir, point.needs)) if 'step_seconds' in r]
    row['pretrain_steps'] = source[-1]['step'] if source else None
    row['pretrain_train_seconds'] = (_train_seconds(source, math.inf)
                                     if source else None)
    if row.get('train_seconds_to_target') is not None and source:
      row['total_train_seconds_to_target'] = (
          row['pretrain_train_seconds'] + row['train_seconds_to_target'])
  results = run_dir.load_results(directory) if status == 'done' else None
  if results is not None:
    row['steps'] = results['step']
    row.update({f'final_{k}': v for k, v in results['final'].items()})
    best = results.get('best') or {}
    row['best_step'] = best.get('step')
    row['best_value'] = best.get('value')
    row.update(results.get('test', {}))
    row['wall_seconds'] = results.get('wall_seconds')
    row['parameters'] = results.get('model_parameters')
    flops = results.get('forward_flops_per_example')
    row['forward_gflops'] = flops / 1e9 if flops is not None else None
  return row


def _train_seconds(train_records: Sequence[dict[str, Any]],
                   up_to_step: float) -> float:
  """Training time (no eval, no start-up) until `up_to_step`, from the
  logged windows' step_seconds."""
  total, previous = 0.0, 0
  for record in train_records:
    if record['step'] > up_to_step:
      break
    total += record['step_seconds'] * (record['step'] - previous)
    previous = record['step']
  return total


def group_rows(rows: Sequence[dict[str, Any]],
               override_keys: Sequence[str]) -> list[dict[str, Any]]:
  """Rows that differ only in 'seed', merged: each numeric column's mean,
  sample std (ddof=1) and the seeds that finished."""
  keys = [k for k in override_keys if k != 'seed']
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(_hashable(row.get(k)) for k in keys),
                      []).append(row)
  out = []
  for members in groups.values():
    done = [r for r in members if r['status'] == 'done']
    group = {k: members[0].get(k) for k in keys}
    group['seeds'] = len(done)
    group['points'] = len(members)
    for column in GROUPED_COLUMNS:
      values = [r[column] for r in done if r.get(column) is not None]
      if values:
        group[f'{column}_mean'] = float(np.mean(values))
        group[f'{column}_std'] = (float(np.std(values, ddof=1))
                                  if len(values) > 1 else None)
        group[f'{column}_n'] = len(values)
    out.append(group)
  return out


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def override_keys(points) -> list[str]:
  keys = []
  for point in points:
    keys += [k for k in point.overrides if k not in keys]
  return sorted(keys, key=lambda k: (k == 'seed', keys.index(k)))


def write_summary(workdir: str, points, statuses: dict[str, str], *,
                  target: Optional[tuple[str, float]] = None) -> list[dict]:
  """Writes every summary file of the sweep; returns the rows."""
  rows = [point_row(p, workdir, statuses[p.name], target) for p in points]
  keys = override_keys(points)
  columns = _columns(rows, keys)
  _atomic_write(os.path.join(workdir, 'summary.json'),
                json.dumps(rows, indent=1, default=str))
  with open(os.path.join(workdir, 'summary.csv.tmp'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(os.path.join(workdir, 'summary.csv.tmp'),
             os.path.join(workdir, 'summary.csv'))
  _atomic_write(os.path.join(workdir, 'summary.md'),
                markdown_table(rows, columns) + '\n')
  groups = group_rows(rows, keys)
  _atomic_write(os.path.join(workdir, SPEC_FILE), json.dumps(
      {'override_keys': keys, 'target': target,
       'points': {p.name: p.overrides for p in points},
       'commands': {p.name: p.command(workdir) for p in points}},
      indent=1, default=str))
  _atomic_write(os.path.join(workdir, 'summary_grouped.md'),
                grouped_table(groups, keys, target) + '\n')
  if any(r['status'] == 'done' for r in rows):
    plot_files(workdir, rows, groups, keys)
  return rows


def _columns(rows, keys) -> list[str]:
  columns = ['name', *keys, 'status']
  for row in rows:
    columns += [k for k in row if k not in columns]
  return columns


def _atomic_write(path: str, text: str) -> None:
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _fmt(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) < 1000 else f'{value:.0f}'
  return str(value).replace('|', '/')


def markdown_table(rows: Sequence[dict[str, Any]],
                   columns: Sequence[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |',
           '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_fmt(row.get(c)) for c in columns) + ' |')
  return '\n'.join(lines)


def grouped_table(groups: Sequence[dict[str, Any]], keys: Sequence[str],
                  target: Optional[tuple[str, float]] = None) -> str:
  """Markdown: one row per group, 'mean +- std' cells."""
  keys = [k for k in keys if k != 'seed']
  shown = [c for c in GROUPED_COLUMNS
           if any(f'{c}_mean' in g for g in groups)]
  header = ['seeds', *keys, *shown]
  lines = []
  if target is not None:
    lines.append(f'Target: {target[0]} reaching {target[1]}.\n')
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for group in groups:
    cells = [f"{group['seeds']}/{group['points']}",
             *(_fmt(group.get(k)) for k in keys)]
    for column in shown:
      mean = group.get(f'{column}_mean')
      std = group.get(f'{column}_std')
      cell = _fmt(mean)
      if std is not None:
        cell += f' +- {_fmt(std)}'
      if mean is not None and group[f'{column}_n'] != group['seeds']:
        cell += f" ({group[f'{column}_n']})"
      cells.append(cell)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main_metric(rows: Sequence[dict[str, Any]]) -> str:
  """The column the plots show: test accuracy (of the queries, for MQAR),
  else bits per byte, else the best eval value."""
  for column in ('test_accuracy', 'test_query_accuracy', 'test_bits_per_byte',
                 'best_value'):
    if any(r.get(column) is not None for r in rows):
      return column
  return 'best_value'


def group_label(group: dict[str, Any], keys: Sequence[str]) -> str:
  """The variant's fields that it sets, for legends and axis labels."""
  return ' '.join(f'{k.rsplit(".", 1)[-1]}={_fmt(group.get(k))}'
                  for k in keys if k != 'seed' and group.get(k) is not None
                  ) or 'base'


def plot_groups(ax, rows, groups, keys, metric: Optional[str] = None):
  """The grouped metric per variant: mean with std error bars, seeds dots."""
  metric = metric or main_metric(rows)
  labels = [group_label(g, keys) for g in groups]
  means = [g.get(f'{metric}_mean', np.nan) for g in groups]
  stds = [g.get(f'{metric}_std') or 0.0 for g in groups]
  positions = np.arange(len(groups))
  ax.bar(positions, means, yerr=stds, capsize=4, color='tab:blue', alpha=0.6)
  seed_keys = [k for k in keys if k != 'seed']
  for position, group in zip(positions, groups):
    values = [r[metric] for r in rows if r['status'] == 'done'
              and r.get(metric) is not None
              and all(_hashable(r.get(k)) == _hashable(group.get(k))
                      for k in seed_keys)]
    ax.plot([position] * len(values), values, 'k.', markersize=5)
  ax.set_xticks(positions)
  ax.set_xticklabels([textwrap.fill(l, 40) for l in labels], rotation=30,
                     ha='right', fontsize=8)
  ax.set_ylabel(f'{metric} (mean +- std over seeds)')
  return ax


def plot_curves(ax, workdir: str, rows, keys):
  """Eval learning curves (the config's best metric) of every point."""
  seed_keys = [k for k in keys if k != 'seed']
  labels = sorted({group_label(r, seed_keys) for r in rows})
  colors = {label: f'C{i % 10}' for i, label in enumerate(labels)}
  metric = None
  for row in rows:
    config = run_dir.load_config(os.path.join(workdir, row['name'])) or {}
    metric = experiment_config.best_metric(config)
    curve = [(r['step'], r[metric]) for r in metrics_lib.read_metrics(
        os.path.join(workdir, row['name'])) if metric in r]
    if curve:
      label = group_label(row, seed_keys)
      ax.plot(*zip(*curve), '.-', color=colors[label], alpha=0.7,
              label=label if label in labels else None)
      labels = [l for l in labels if l != label]  # one legend entry each
  ax.set_xlabel('step')
  ax.set_ylabel(metric or 'eval metric')
  ax.legend(fontsize=7)
  return ax


def plot_files(workdir: str, rows, groups, keys) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  metric = main_metric(rows)
  paths = []
  for path, draw in (
      (f'summary_{metric}.png',
       lambda ax: plot_groups(ax, rows, groups, keys, metric)),
      ('curves.png', lambda ax: plot_curves(ax, workdir, rows, keys))):
    # Room below the axes for the rotated, wrapped variant labels.
    longest = min(40, max(len(group_label(g, keys)) for g in groups))
    lines = max(textwrap.fill(group_label(g, keys), 40).count('\n') + 1
                for g in groups)
    figure, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) + 2),
                                       4 + 0.04 * longest + 0.15 * lines))
    draw(ax)
    figure.tight_layout()
    figure.savefig(os.path.join(workdir, path), dpi=100)
    plt.close(figure)
    paths.append(os.path.join(workdir, path))
  return paths


def parse_target(text: Optional[str]) -> Optional[tuple[str, float]]:
  """'eval_accuracy:0.4' -> ('eval_accuracy', 0.4); None stays None."""
  if not text:
    return None
  metric, _, value = text.partition(':')
  try:
    number = float(value)
  except ValueError:
    number = math.nan
  if not metric.startswith('eval_') or not math.isfinite(number):
    raise ValueError(f"target must be 'eval_<metric>:<number>', got {text!r}")
  return metric, number


def status_line(statuses: dict[str, str]) -> str:
  counts = {}
  for status in statuses.values():
    counts[status] = counts.get(status, 0) + 1
  return f'{len(statuses)} points: ' + ', '.join(
      f'{n} {s}' for s, n in sorted(counts.items()))


def load_spec(workdir: str) -> dict[str, Any]:
  """DIR/sweep.json: the varied fields, the target, each point's overrides
  and its train command."""
  with open(os.path.join(workdir, SPEC_FILE)) as f:
    return json.load(f)


def load_summary(workdir: str) -> list[dict[str, Any]]:
  """The rows of DIR/summary.json."""
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run the sweep (or '
                            '--summarize_only) first')
  with open(path) as f:
    return json.load(f)
