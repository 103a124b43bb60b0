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
"""

import dataclasses
import fcntl
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from simmim_jax import checks
from simmim_jax.sweep import summary as sweep_summary
from simmim_jax.sweep.points import Point
from simmim_jax.sweep.points import config_mismatch
from simmim_jax.training import run_dir

STATUS_FILE = 'sweep_status.json'  # the runner's record of a failed point


# --- Running -----------------------------------------------------------------

def point_status(point: Point, workdir: str) -> str:
  """'done', 'failed', 'interrupted' (checkpoints, no results) or 'pending'."""
  directory = os.path.join(workdir, point.name)
  if os.path.exists(os.path.join(directory, run_dir.RESULTS_FILE)):
    return 'done'
  if os.path.exists(os.path.join(directory, STATUS_FILE)):
    return 'failed'
  if os.path.isdir(run_dir.checkpoints_dir(directory)):
    return 'interrupted'
  return 'pending'


def device_shares(parallel: int) -> list[dict[str, Any]]:
  """What each of `parallel` slots gets: CPU cores (affinity) and, on a GPU
  host, CUDA_VISIBLE_DEVICES."""
  checks.integer(parallel, 'parallel')
  gpus = _visible_gpus()
  if gpus and parallel > len(gpus):
    raise checks.ConfigError(
        f'parallel={parallel} but this host has {len(gpus)} GPU(s): each '
        'point needs at least one')
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
  shares = device_shares(parallel)  # a bad `parallel` fails before any work
  os.makedirs(workdir, exist_ok=True)
  for point in points:
    mismatch = config_mismatch(point, os.path.join(workdir, point.name))
    if mismatch:
      raise checks.ConfigError(
          f'{os.path.join(workdir, point.name)} holds a run of another config '
          f'than sweep point {point.name} ({"; ".join(mismatch[:5])}); use '
          'another --workdir or move that directory aside')
  lock = _lock(workdir)
  statuses = {p.name: point_status(p, workdir) for p in points}
  todo = [p for p in points if statuses[p.name] != 'done']
  log(f'{len(points) - len(todo)} of {len(points)} points done; '
      f'{len(todo)} to run, {parallel} at a time')
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
  log_file = open(os.path.join(directory, run_dir.LOG_FILE), 'a')
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
                         last_error(os.path.join(directory, run_dir.LOG_FILE)),
                         returncode)


def last_error(log_path: str) -> str:
  """The last exception line of a log (or its last line); a user's mistake
  reads `error: ...` (experiments/cli.py)."""
  with open(log_path, errors='replace') as f:
    lines = [line.strip() for line in f.read().splitlines()[-200:]
             if line.strip()]
  errors = [line for line in lines
            if re.match(r'^([\w.]+(Error|Exception|Interrupt)\b|error: )',
                        line)]
  return (errors or lines or ['(no output)'])[-1][:500]
