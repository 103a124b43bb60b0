"""The one metrics path: DIR/metrics.jsonl, TensorBoard events, a progress line.

Only the main process writes. On resume, records past the restored step
(work that is about to be redone) are dropped from metrics.jsonl, so the log
reads as one uninterrupted run.
"""

import json
import math
import os
import sys
import time
from typing import Any

import jax

from simmim_jax.training import run_dir


class MetricLogger:
  """Writes scalar metrics keyed by step."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               progress: bool = True):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.progress = progress and self.enabled
    self._start = (start_step, time.perf_counter())
    self.path = os.path.join(workdir, run_dir.METRICS_FILE)
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, start_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tensorboard = SummaryWriter(
        os.path.join(workdir, run_dir.TENSORBOARD_DIR))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Appends one record {'step': step, **metrics} and the TB scalars."""
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in record.items():
      if name != 'step' and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def show_progress(self, step: int, metrics: dict[str, Any]) -> None:
    """One terminal line: step, a bar, ETA and a few metrics."""
    if not self.progress:
      return
    first_step, first_time = self._start
    done = step - first_step
    elapsed = time.perf_counter() - first_time
    eta = (self.total_steps - step) * elapsed / done if done else math.nan
    width = 24
    filled = int(width * step / max(self.total_steps, 1))
    shown = ' '.join(f'{k}={_short(v)}' for k, v in metrics.items())
    sys.stderr.write(
        f'\r[{"#" * filled}{"." * (width - filled)}] {step}/{self.total_steps}'
        f' ETA {_duration(eta)} {shown}\x1b[K')
    if step >= self.total_steps:
      sys.stderr.write('\n')
    sys.stderr.flush()

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()
      if self.progress:
        sys.stderr.write('\n')


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of DIR/metrics.jsonl, in order."""
  path = os.path.join(workdir, run_dir.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if _step_of(line) <= step]
  if len(kept) != len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)


def _step_of(line: str) -> int:
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError):  # a line cut by a kill: drop it
    return sys.maxsize


def _plain(value: Any) -> Any:
  if hasattr(value, 'item'):
    value = value.item()
  return value


def _short(value: Any) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '--:--'
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else \
      f'{minutes:02d}:{seconds:02d}'
