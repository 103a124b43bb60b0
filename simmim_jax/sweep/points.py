"""Sweep points: the helpers sweep files use, and each point's name, config
and command.

A sweep file is Python with `get_sweep(variant) -> list[dict]`; each dict is
one point, keyed by the dotted names of `--config.` overrides
(`'model.family'`, `'seed'`). `make_points` resolves them against a config
into `Point`s: a name derived from the overrides, the validated config and
the `python -m experiments.train` arguments that run it.

  points = sweep.with_seeds(sweep.product({'model.family': ['simmim',
                                                            'local']}), 3)
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
from typing import Any, Mapping, Optional, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from simmim_jax import checks
from simmim_jax.checks import ConfigError
from simmim_jax.training import run_dir
from simmim_jax.training.experiment_config import validate_config

# Config fields that change nothing a run computes; ignored when comparing
# a directory's saved config with a point's.
IGNORED_FIELDS = ('progress', 'compilation_cache_dir')
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
    raise ConfigError(f'zipped: axes have different lengths {lengths}')
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


# --- Points -------------------------------------------------------------------

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
    raise checks.MissingPathError(f'sweep file {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location('_sweep_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'sweep file {path!r} has no get_sweep(variant)')
  points = module.get_sweep(variant) if variant else module.get_sweep()
  if not isinstance(points, (list, tuple)) or not points or not all(
      isinstance(p, Mapping) for p in points):
    raise ConfigError(f'{spec}: get_sweep must return a non-empty list of '
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


def resolve_config(
    config_spec: str,
    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """The config `experiments.train --config=SPEC --config.k=v ...` builds,
  parsed by the same flag code."""
  argv = ['sweep', f'--config={config_spec}',
          *(f'--config.{k}={v}' for k, v in overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  config = values.config
  config.keys()  # a config file that did not load raises here (OSError)
  return config


def make_points(config_spec: str, sweep_points: Sequence[Mapping[str, Any]],
                base_overrides: Sequence[tuple[str, str]] = ()) -> list[Point]:
  """Resolves and validates every point before anything runs.

  `base_overrides` are (field, text) pairs applied to every point, as given
  on the command line. Raises ConfigError naming the point and the field.
  """
  base_keys = {k for k, _ in base_overrides}
  points, names = [], {}
  for index, overrides in enumerate(sweep_points):
    label = f'sweep point {index} ({_fields_text(overrides)})'
    both = sorted(base_keys & set(overrides))
    if both:
      raise ConfigError(f'{label}: {both} set both by the point and by '
                        '--config. flags; set it in one place')
    texts = [*base_overrides,
             *((k, cli_value(v)) for k, v in overrides.items())]
    try:
      # No progress bar: points write to log files.
      config = resolve_config(config_spec, [*texts, ('progress', 'False')])
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError,
            OSError) as error:
      raise ConfigError(f'{label}: {checks.describe(error)}') from None
    _check_read_back(label, overrides, config)
    needs = reference(config.init_from)
    if needs is not None and needs not in names:
      raise ConfigError(f'{label}: init_from={config.init_from!r} names no '
                        'earlier point of this sweep')
    try:
      # A reference's directory does not exist before its point has run.
      validate_config(_without_init_from(config) if needs else config)
    except ValueError as error:
      raise ConfigError(f'{label}: {checks.describe(error)}') from None
    name = point_name(overrides)
    if name in names:
      raise ConfigError(f'{label} has the same directory name {name!r} as '
                        f'point {names[name]}: points must differ')
    names[name] = index
    argv = (f'--config={config_spec}',
            *(f'--config.{k}={v}' for k, v in texts),
            '--config.progress=False')
    points.append(Point(name, dict(overrides), argv, config, needs))
  return points


def _fields_text(overrides: Mapping[str, Any]) -> str:
  """'model.family=local, seed=1': a point's fields as its flags give them."""
  return ', '.join(f'{k}={cli_value(v)}' for k, v in overrides.items())


def _check_read_back(label: str, overrides: Mapping[str, Any],
                     config: ml_collections.ConfigDict) -> None:
  """Raises unless each field reads back as the point's value and type."""
  for key, value in overrides.items():
    got = _get(config, key)
    want = tuple(value) if isinstance(value, list) else value
    if got != want or type(got) is not type(want):
      raise ConfigError(f'{label}: field {key!r}={value!r} reads back from '
                        f'the command line as {got!r}; use a value of the '
                        "field's type")


def _without_init_from(config: ml_collections.ConfigDict):
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.init_from = ''
  return copy


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
  comparable = {k: v for k, v in config_dict.items()
                if k not in IGNORED_FIELDS}
  model = comparable.get('model')
  if isinstance(model, dict) and isinstance(model.get('remat'), bool):
    # Saved before the remat policies had names.
    comparable['model'] = {**model,
                           'remat': 'full' if model['remat'] else 'none'}
  return comparable


def config_mismatch(point: Point, directory: str) -> list[str]:
  """Fields where DIR/config.json differs from the point's config (empty if
  they agree or the directory has no config yet)."""
  saved = run_dir.load_config(directory)
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
