"""Sweeps: points and their names (points.py), the resumable runner
(runner.py), and the summary tables and plots (summary.py, importable from a
notebook).

A sweep file needs only this package's face:

  from simmim_jax import sweep
  points = sweep.with_seeds(sweep.product({'model.family': ['simmim',
                                                            'local']}), 3)
"""

from simmim_jax.sweep.points import Point
from simmim_jax.sweep.points import after
from simmim_jax.sweep.points import config_mismatch
from simmim_jax.sweep.points import dry_run_commands
from simmim_jax.sweep.points import fine_tune
from simmim_jax.sweep.points import load_sweep
from simmim_jax.sweep.points import make_points
from simmim_jax.sweep.points import point_name
from simmim_jax.sweep.points import product
from simmim_jax.sweep.points import resolve_config
from simmim_jax.sweep.points import with_seeds
from simmim_jax.sweep.points import zipped
from simmim_jax.sweep.runner import point_status
from simmim_jax.sweep.runner import run_sweep

__all__ = [
    'Point',
    'after',
    'config_mismatch',
    'dry_run_commands',
    'fine_tune',
    'load_sweep',
    'make_points',
    'point_name',
    'product',
    'resolve_config',
    'with_seeds',
    'zipped',
    'point_status',
    'run_sweep',
]
