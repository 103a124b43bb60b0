"""Input validation shared by the pure functions and the models.

Every check raises `ValueError` with a message that names the argument, so a
researcher composing functions in an ablation sees which input is wrong.
Checks look only at static shapes and Python values, so they are free under jit.

Mistakes in a config, flag, sweep file or data path raise `ConfigError` (a
`ValueError`): the entry points print those as one line, without a traceback.
"""

import math
import re
from typing import Any, Sequence

import jax
import numpy as np


class ConfigError(ValueError):
  """A user's mistake in a config value, flag, sweep file or path; the
  message names the field and says what to write instead."""


class MissingPathError(ConfigError, FileNotFoundError):
  """A file or directory a config or flag names does not exist (or holds
  nothing usable)."""


def integer(value: Any, name: str, *, minimum: int = 1,
            hint: str = '') -> int:
  """Returns `value` as an int, or raises unless it is an integer >=
  `minimum` (bools are not integers here). `hint` says what a value means,
  e.g. '(0: evaluate only)'."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
      or value < minimum:
    kind = ('a positive integer' if minimum == 1
            else f'an integer >= {minimum}')
    raise ConfigError(f'{name} must be {kind}{" " + hint if hint else ""}, '
                      f'got {value!r}')
  return int(value)


def positive_int(value: Any, name: str) -> int:
  """Returns `value` as an int, or raises if it is not an integer > 0."""
  return integer(value, name, minimum=1)


def number(value: Any, name: str, *, low: float = 0.0,
           high: float = math.inf, low_open: bool = False,
           high_open: bool = True) -> float:
  """Returns `value` as a float, or raises unless it is a real number in
  the interval from `low` to `high` (each end open or closed)."""
  ok = (not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  if not ok:
    if high == math.inf and high_open:
      want = f'{">" if low_open else ">="} {low:g}'
    else:
      want = ('in ' + ('(' if low_open else '[') + f'{low:g}, {high:g}'
              + (')' if high_open else ']'))
    raise ConfigError(f'{name} must be {want}, got {value!r}')
  return float(value)


def describe(error: BaseException) -> str:
  """`error` as one line for a user, for errors raised while a config is
  resolved from flags: ml_collections' lookup and config-file errors, whose
  own messages span lines or quote themselves, read as what to fix."""
  inner = error.__context__
  if inner is not None and str(inner).startswith('Error whilst parsing '
                                                 'config file'):
    # absl's "flag --config=SPEC: <traceback>": the SPEC and the cause.
    flag = str(error).split(': Error whilst', 1)[0].removeprefix('flag ')
    return f'{flag}: {describe(inner.__context__ or inner)}'
  text = str(error)
  missing = re.search(r"No such file or directory: '([^']*)'", text)
  if missing:
    return f'no such file {missing.group(1)!r}'
  if isinstance(error, (KeyError, AttributeError)):
    root = error
    while isinstance(root.__context__, (KeyError, AttributeError)):
      root = root.__context__
    if isinstance(root, KeyError) and root.args:
      field = str(root.args[0]).strip('\'"')
      guess = re.search(r'Did you mean "([^"]+)"', text)
      return f'no config field {field!r}' + (
          f'; did you mean {guess.group(1)!r}?' if guess else '')
  return ' '.join(text.removeprefix('flag ').split())


def rank(x: Any, expected: int, name: str, layout: str) -> None:
  """Raises unless `x` has `expected` dimensions; `layout` names them."""
  ndim = np.ndim(x)
  if ndim != expected:
    raise ValueError(
        f'{name} must have rank {expected} {layout}, got shape {np.shape(x)}')


def same_shape(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> None:
  """Raises unless every named shape equals the first one."""
  first_name, first = shapes[0]
  for name, shape in shapes[1:]:
    if tuple(shape) != tuple(first):
      raise ValueError(
          f'{name} has shape {tuple(shape)} but {first_name} has shape '
          f'{tuple(first)}; they must match')


def mask(m: Any, expected_shape: tuple[int, ...], name: str = 'mask') -> None:
  """Raises unless `m` is None or a boolean-like array of `expected_shape`."""
  if m is None:
    return
  if tuple(np.shape(m)) != tuple(expected_shape):
    raise ValueError(
        f'{name} must have shape {tuple(expected_shape)} (True = real '
        f'token), got {tuple(np.shape(m))}')
  dtype = np.dtype(m.dtype) if hasattr(m, 'dtype') else np.asarray(m).dtype
  if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer)):
    raise ValueError(f'{name} must be boolean, got dtype {dtype}')


def is_concrete(x: Any) -> bool:
  """True when `x` holds values (not a tracer), so value checks can run."""
  return not isinstance(x, jax.core.Tracer)


def token_ids(tokens: Any, vocab_size: int, name: str = 'tokens') -> None:
  """Raises on non-integer tokens, and on out-of-range ids when concrete.

  Under jit the values are unknown; the input pipeline checks them there.
  """
  dtype = np.dtype(tokens.dtype)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f'{name} must be integer token ids, got dtype {dtype}')
  if is_concrete(tokens) and np.size(tokens):
    values = np.asarray(tokens)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab_size:
      bad = low if low < 0 else high
      raise ValueError(
          f'{name} contains id {bad}, outside [0, vocab_size={vocab_size})')
