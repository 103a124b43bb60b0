"""Ablation sweeps: many training runs of one config, resumable, summarized.

A sweep file is Python with `get_sweep(variant) -> list[dict]`; each dict is
one point, keyed by the dotted names of `--config.` overrides
(`'model.family'`, `'seed'`). Every point runs `python -m experiments.train`
in a subprocess (its own process: the same command `--dry_run` prints for an
external scheduler) into DIR/<name>, where <name> is derived from its
overrides. Rerunning skips finished points and resumes interrupted ones from
their checkpoints; a directory holding another config is refused. A point
whose `init_from` is `after(other_point)` starts from that point's run (e.g.
fine-tuning after masked pretraining) and runs once it has finished. Finished
points (config.json, metrics.jsonl, results.json) copied from another sweep
directory count as done when their configs are the points' own.

  points = sweep.with_seeds(sweep.product({'model.family': ['simmim',
                                                            'local']}), 3)
"""

import dataclasses
import fcntl
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from simmim_jax.training import checkpoints
from simmim_jax.sweep import summary as sweep_summary
from simmim_jax.training.experiment_config import validate_config

STATUS_FILE = 'sweep_status.json'  # the runner's record of a failed point
LOG_FILE = 'train.log'
# Config fields that change nothing a run computes; ignored when comparing
# a directory's saved config with a point's.
IGNORED_FIELDS = ('progress',)
_MAX_NAME = 80
_NAMED_LAST = ('best_metric', 'best_mode', 'objective')  # left out first


# --- Helpers for sweep files -------------------------------------------------

def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination: product({'a': [1, 2], 'b': [3]}) -> 2 points."""
  keys = list(axes)
  return [dict(zip(keys, values))
          for values in itertools.product(*(axes[k] for k in keys))]


def zipped(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Values taken together: zipped({'a': [1, 2], 'b': [3, 4]}) -> 2 points."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'zipped: axes have different lengths {lengths}')
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def with_seeds(points: Sequence[Mapping[str, Any]],
               seeds: int | Sequence[int]) -> list[dict[str, Any]]:
  """Each point once per seed (an int n means seeds 0..n-1), seed-major:
  every point's first seed runs before any second seed, so a partial sweep
  already compares all points."""
  seeds = range(seeds) if isinstance(seeds, int) else seeds
  return [{**point, 'seed': seed} for seed in seeds for point in points]


REF = '@'  # init_from='@NAME': the directory of this sweep's point NAME


def after(overrides: Mapping[str, Any]) -> str:
  """The init_from value that starts a point from the run of the sweep point
  with these `overrides`; that point runs first."""
  return REF + point_name(overrides)


def fine_tune(pretraining: Sequence[Mapping[str, Any]],
              **fields: Any) -> list[dict[str, Any]]:
  """One point per pretraining point, started from its run: its model and
  data fields and seed (the objective, schedule and masking are the
  pretraining's own), plus init_from and `fields` (dotted names, as
  `**{'learning_rate': 3e-4}`)."""
  return [{**{k: v for k, v in point.items()
              if k == 'seed' or k.startswith(('model.', 'data.'))},
           **fields, 'init_from': after(point)} for point in pretraining]


def reference(value: Any) -> Optional[str]:
  """The point name an init_from value refers to, or None."""
  if isinstance(value, str) and value.startswith(REF):
    return value[len(REF):]
  return None


# --- Points --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep."""
  name: str                     # its subdirectory of the sweep workdir
  overrides: dict[str, Any]     # the point's own fields (sweep file)
  argv: tuple[str, ...]         # `python -m experiments.train` arguments
  config: ml_collections.ConfigDict  # fully resolved, as training sees it
  needs: Optional[str] = None   # the point whose run this one starts from

  @property
  def source_group(self) -> Optional[str]:
    """The point this one starts from, named without its seed."""
    return _seedless(self.needs) if self.needs else None

  def train_args(self, workdir: str) -> list[str]:
    """`-m experiments.train ...` for this point under the sweep `workdir`."""
    argv = [f'--config.init_from={os.path.join(workdir, self.needs)}'
            if self.needs and a.startswith('--config.init_from=') else a
            for a in self.argv]
    return ['-m', 'experiments.train', *argv,
            f'--workdir={os.path.join(workdir, self.name)}']

  def command(self, workdir: str) -> str:
    """The shell command that runs this point anywhere."""
    return shlex.join(['python', *self.train_args(workdir)])


def load_sweep(spec: str) -> list[dict[str, Any]]:
  """The points of `path/to/sweep.py[:variant]`."""
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'sweep file {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location('_sweep_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'sweep file {path!r} has no get_sweep(variant)')
  points = module.get_sweep(variant) if variant else module.get_sweep()
  if not isinstance(points, (list, tuple)) or not points or not all(
      isinstance(p, Mapping) for p in points):
    raise ValueError(f'{spec}: get_sweep must return a non-empty list of '
                     f'dicts, got {type(points).__name__}')
  return [dict(p) for p in points]


def cli_value(value: Any) -> str:
  """`value` as the text of a --config.<field>= flag."""
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
  """A readable, stable directory name: sorted key=value pairs (seed last),
  the last part of each key; a reference (`after`) reads as its point's
  name without the seed. When that is too long, parts are left out (the
  best-checkpoint fields and the objective first, which the masking fields
  usually imply, then the longest) and a short hash of all of them is added
  (also when empty)."""
  keys = sorted(overrides, key=lambda k: (k == 'seed', k))
  parts = {}
  for k in keys:
    ref = reference(overrides[k])
    value = _seedless(ref) if ref is not None else cli_value(overrides[k])
    parts[k] = re.sub(r'[^A-Za-z0-9_.=+-]+', '-',
                      f'{k.rsplit(".", 1)[-1]}={value}').strip('-')
  name = '-'.join(parts.values())
  if name and len(name) <= _MAX_NAME:
    return name
  digest = hashlib.sha1(json.dumps(
      {k: overrides[k] for k in keys}, sort_keys=True,
      default=repr).encode()).hexdigest()[:8]
  droppable = sorted((k for k in keys if k != 'seed'
                      and reference(overrides[k]) is None),
                     key=lambda k: (k not in _NAMED_LAST, -len(parts[k])))
  while droppable and len('-'.join(parts.values())) > _MAX_NAME - 9:
    del parts[droppable.pop(0)]
  name = '-'.join(parts.values())[:_MAX_NAME - 9].strip('-')
  return f'{name}-{digest}' if name else f'base-{digest}'


def _seedless(name: str) -> str:
  """A point name without its seed (and the hash that follows it)."""
  return re.sub(r'-?seed=[^-]*(-[0-9a-f]{8})?$', '', name)


def resolve_config(config_spec: str,
                   overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """The config `experiments.train --config=SPEC --config.k=v ...` builds,
  parsed by the same flag code."""
  argv = ['sweep', f'--config={config_spec}',
          *(f'--config.{k}={v}' for k, v in overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def make_points(config_spec: str, sweep_points: Sequence[Mapping[str, Any]],
                base_overrides: Sequence[tuple[str, str]] = ()) -> list[Point]:
  """Resolves and validates every point before anything runs.

  `base_overrides` are (field, text) pairs applied to every point, as given
  on the command line. Raises ValueError naming the point and the field.
  """
  base_keys = {k for k, _ in base_overrides}
  points, names = [], {}
  for index, overrides in enumerate(sweep_points):
    label = f'sweep point {index} {dict(overrides)}'
    both = sorted(base_keys & set(overrides))
    if both:
      raise ValueError(f'{label}: {both} set both by the point and by '
                       '--config. flags; set it in one place')
    texts = [*base_overrides, *((k, cli_value(v)) for k, v in overrides.items())]
    try:
      # No progress bar: points write to log files.
      config = resolve_config(config_spec, [*texts, ('progress', 'False')])
    except (flags.Error, AttributeError, KeyError, TypeError,
            ValueError) as error:
      raise ValueError(f'{label}: {_one_line(error)}') from None
    for key, value in overrides.items():
      got = _get(config, key)
      want = tuple(value) if isinstance(value, list) else value
      if got != want or type(got) is not type(want):
        raise ValueError(f'{label}: field {key!r}={value!r} reads back from '
                         f'the command line as {got!r}; use a value of the '
                         "field's type")
    needs = reference(config.init_from)
    if needs is not None and needs not in names:
      raise ValueError(f'{label}: init_from={config.init_from!r} names no '
                       'earlier point of this sweep')
    try:
      # A reference's directory does not exist before its point has run.
      validate_config(_without_init_from(config) if needs else config)
    except ValueError as error:
      raise ValueError(f'{label}: {error}') from None
    name = point_name(overrides)
    if name in names:
      raise ValueError(f'{label} has the same directory name {name!r} as '
                       f'point {names[name]}: points must differ')
    names[name] = index
    argv = (f'--config={config_spec}',
            *(f'--config.{k}={v}' for k, v in texts),
            '--config.progress=False')
    points.append(Point(name, dict(overrides), argv, config, needs))
  return points


def _without_init_from(config: ml_collections.ConfigDict):
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.init_from = ''
  return copy


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def _one_line(error: BaseException) -> str:
  return ' '.join(str(error).strip("'\"").split())


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in config_dict.items() if k not in IGNORED_FIELDS}


def config_mismatch(point: Point, directory: str) -> list[str]:
  """Fields where DIR/config.json differs from the point's config (empty if
  they agree or the directory has no config yet)."""
  saved = checkpoints.load_config(directory)
  if saved is None:
    return []
  want = _comparable(json.loads(point.config.to_json_best_effort()))
  saved = _comparable(saved)
  if point.needs:  # by point name: the sweep (or the point) may have moved
    want['init_from'] = point.needs
    saved['init_from'] = os.path.basename(
        os.path.normpath(saved.get('init_from', '')))
  flat_want, flat_saved = _flatten(want), _flatten(saved)
  # Only fields both configs have: a field added to (or dropped from) the
  # code since that run started does not make its results another config's.
  return [f'{k}: saved {flat_saved[k]!r}, point {flat_want[k]!r}'
          for k in sorted(set(flat_want) & set(flat_saved))
          if flat_want[k] != flat_saved[k]]


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def dry_run_commands(points: Sequence[Point], workdir: str) -> list[str]:
  """One shell command per point, for an external scheduler."""
  return [p.command(workdir) for p in points]


# --- Running -----------------------------------------------------------------

def point_status(point: Point, workdir: str) -> str:
  """'done', 'failed', 'interrupted' (checkpoints, no results) or 'pending'."""
  directory = os.path.join(workdir, point.name)
  if os.path.exists(os.path.join(directory, checkpoints.RESULTS_FILE)):
    return 'done'
  if os.path.exists(os.path.join(directory, STATUS_FILE)):
    return 'failed'
  if os.path.isdir(os.path.join(directory, 'checkpoints')):
    return 'interrupted'
  return 'pending'


def device_shares(parallel: int) -> list[dict[str, Any]]:
  """What each of `parallel` slots gets: CPU cores (affinity) and, on a GPU
  host, CUDA_VISIBLE_DEVICES."""
  if parallel < 1:
    raise ValueError(f'parallel must be >= 1, got {parallel}')
  gpus = _visible_gpus()
  if gpus and parallel > len(gpus):
    raise ValueError(f'parallel={parallel} but this host has {len(gpus)} '
                     'GPU(s): each point needs at least one')
  cpus = sorted(os.sched_getaffinity(0))
  shares = []
  for slot in range(parallel):
    share = {'cpus': cpus[slot * len(cpus) // parallel:
                          (slot + 1) * len(cpus) // parallel] or
                     [cpus[slot % len(cpus)]]}
    if gpus:
      per_slot = len(gpus) // parallel
      share['env'] = {'CUDA_VISIBLE_DEVICES': ','.join(
          gpus[slot * per_slot:(slot + 1) * per_slot])}
    shares.append(share)
  return shares


def _visible_gpus() -> list[str]:
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [g for g in visible.split(',') if g.strip()]
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True,
                             text=True, timeout=30, check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(listing.splitlines())
          if line.startswith('GPU ')]


@dataclasses.dataclass
class SweepResult:
  statuses: dict[str, str]       # point name -> status after this call
  signal: Optional[int] = None   # the signal that stopped the sweep

  @property
  def interrupted(self) -> bool:
    return self.signal is not None

  @property
  def failed(self) -> int:
    return sum(s == 'failed' for s in self.statuses.values())


def run_sweep(points: Sequence[Point], workdir: str, *, parallel: int = 1,
              target: Optional[tuple[str, float]] = None,
              log: Optional[Callable[[str], None]] = None) -> SweepResult:
  """Runs every unfinished point, `parallel` at a time; writes the summary
  after each finished point. SIGINT / SIGTERM stop the sweep once running
  points have checkpointed (they get SIGTERM). `log` gets progress lines
  (default: printed and flushed)."""
  log = log or functools.partial(print, flush=True)
  os.makedirs(workdir, exist_ok=True)
  for point in points:
    mismatch = config_mismatch(point, os.path.join(workdir, point.name))
    if mismatch:
      raise ValueError(
          f'{os.path.join(workdir, point.name)} holds a run of another config '
          f'than sweep point {point.name} ({"; ".join(mismatch[:5])}); use '
          'another --workdir or move that directory aside')
  lock = _lock(workdir)
  statuses = {p.name: point_status(p, workdir) for p in points}
  todo = [p for p in points if statuses[p.name] != 'done']
  log(f'{len(points) - len(todo)} of {len(points)} points done; '
      f'{len(todo)} to run, {parallel} at a time')
  shares = device_shares(parallel)
  free = list(range(parallel))
  running: dict[int, tuple[Point, subprocess.Popen, Any]] = {}
  stop = {'signal': None}

  def on_signal(signum, frame):
    del frame
    if stop['signal'] is not None:  # second signal: do not wait
      for _, process, _ in running.values():
        process.kill()
      return
    stop['signal'] = signum
    log(f'signal {signum}: stopping after the running points checkpoint')
    for _, process, _ in running.values():
      process.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, on_signal)
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while todo or running:
      while todo and free and stop['signal'] is None:
        point = _next_ready(todo, running, statuses, workdir, log)
        if point is None:  # the rest wait for running points
          break
        slot = free.pop(0)
        running[slot] = (point, *_start(point, workdir, shares[slot]))
        log(f'started {point.name}')
      time.sleep(0.2)
      for slot, (point, process, log_file) in list(running.items()):
        if process.poll() is None:
          continue
        log_file.close()
        del running[slot]
        free.append(slot)
        statuses[point.name] = _finished(point, workdir, process.returncode,
                                         stopping=stop['signal'] is not None)
        log(f'{point.name}: {statuses[point.name]}')
        sweep_summary.write_summary(workdir, points, statuses, target=target)
      if stop['signal'] is not None and not running:
        break
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    lock.close()
  sweep_summary.write_summary(workdir, points, statuses, target=target)
  return SweepResult(statuses, signal=stop['signal'])


def _next_ready(todo: list[Point], running, statuses: dict[str, str],
                workdir: str, log) -> Optional[Point]:
  """Takes from `todo` the first point whose reference (if any) has finished;
  a point whose reference failed in this run is recorded as failed."""
  waiting_on = {p.name for p in todo} | {p.name for p, *_ in running.values()}
  for point in list(todo):
    if point.needs in waiting_on:
      continue
    todo.remove(point)
    if point.needs is None or statuses[point.needs] == 'done':
      return point
    statuses[point.name] = _record_failure(
        point, workdir, f'init_from point {point.needs} has not finished: '
        f'it {statuses[point.needs]}')
    log(f'{point.name}: failed (its init_from point {point.needs} '
        f'{statuses[point.needs]})')
  return None


def _record_failure(point: Point, workdir: str, error: str,
                    returncode: Optional[int] = None) -> str:
  directory = os.path.join(workdir, point.name)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, STATUS_FILE), 'w') as f:
    json.dump({'status': 'failed', 'returncode': returncode, 'error': error},
              f, indent=1)
  return 'failed'


def _lock(workdir: str):
  lock = open(os.path.join(workdir, '.sweep.lock'), 'w')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    raise RuntimeError(f'another sweep is running in {workdir}') from None
  return lock


def _start(point: Point, workdir: str, share: dict[str, Any]):
  directory = os.path.join(workdir, point.name)
  os.makedirs(directory, exist_ok=True)
  status = os.path.join(directory, STATUS_FILE)
  if os.path.exists(status):
    os.remove(status)
  log_file = open(os.path.join(directory, LOG_FILE), 'a')
  env = {**os.environ, **share.get('env', {})}
  cpus = share['cpus']

  def in_child():
    os.setpgid(0, 0)          # Ctrl-C reaches the sweep, which relays SIGTERM
    _die_with_parent()        # SIGKILL of the sweep ends its points too
    os.sched_setaffinity(0, cpus)

  process = subprocess.Popen([sys.executable, *point.train_args(workdir)],
                             stdout=log_file,
                             stderr=subprocess.STDOUT, env=env,
                             preexec_fn=in_child)
  return process, log_file


def _die_with_parent():
  import ctypes  # pylint: disable=g-import-not-at-top
  pr_set_pdeathsig = 1
  ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _finished(point: Point, workdir: str, returncode: int, *,
              stopping: bool) -> str:
  directory = os.path.join(workdir, point.name)
  if returncode == 0 or (stopping and returncode == -signal.SIGTERM):
    # done, or stopped by our SIGTERM (before training began, if killed)
    return point_status(point, workdir)
  return _record_failure(point, workdir,
                         last_error(os.path.join(directory, LOG_FILE)),
                         returncode)


def last_error(log_path: str) -> str:
  """The last exception line of a log (or its last line)."""
  with open(log_path, errors='replace') as f:
    lines = [line.strip() for line in f.read().splitlines()[-200:]
             if line.strip()]
  errors = [line for line in lines
            if re.match(r'^[\w.]+(Error|Exception|Interrupt)\b', line)]
  return (errors or lines or ['(no output)'])[-1][:500]
