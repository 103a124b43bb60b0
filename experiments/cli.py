"""How the entry points report a user's mistake: one line, exit status 2.

  if __name__ == '__main__':
    cli.run(main)

A mistake in a flag, config value, sweep file or data path prints
`error: <what is wrong and the fix>` on stderr and exits with status 2:
errors while flags (and --config overrides) are parsed, a
`checks.ConfigError` raised anywhere in `main`, and the errors raised inside
a `user_errors()` block (a config checked before any work starts). Anything
else (a bug, a NaN loss, running out of memory) keeps its traceback.
"""

import contextlib
import os
import re
import sys
from typing import Callable, Iterator, NoReturn, Sequence

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from simmim_jax import checks

USAGE_STATUS = 2
# Raised while flags are parsed, all by what the user wrote: absl's own
# errors, --config overrides of missing fields (KeyError, AttributeError) or
# bad types, and a --config file that does not load (OSError).
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError,
                OSError)


def fail(message: str) -> NoReturn:
  """Prints `error: message` as one line on stderr and exits with status 2."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.exit(USAGE_STATUS)


@contextlib.contextmanager
def user_errors(kinds: tuple[type[BaseException], ...] = (
    ValueError, KeyError, OSError)) -> Iterator[None]:
  """Errors of `kinds` raised in the block are the user's: they are raised
  again as a `checks.ConfigError`, which `run` prints as one line. Wrap only
  checks of what the user gave, never the work itself."""
  try:
    yield
  except checks.ConfigError:
    raise
  except kinds as error:
    raise checks.ConfigError(checks.describe(error)) from error


def enable_compilation_cache(directory: str) -> str:
  """Turns on JAX's persistent compilation cache in `directory` ('' = off)
  and returns the directory in use: a rerun, a resumed run or a sweep's
  next point loads the programs it compiled before instead of compiling
  them again. $JAX_COMPILATION_CACHE_DIR, when set, wins."""
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  if directory:
    directory = os.path.expanduser(directory)
    jax.config.update('jax_compilation_cache_dir', directory)
  return directory


def int_list(values: Sequence[str], flag: str) -> tuple[int, ...]:
  """A list flag's texts as positive ints, or a ConfigError naming it."""
  try:
    numbers = tuple(int(text) for text in values)
  except ValueError:
    numbers = ()
  if not numbers or min(numbers) < 1:
    raise checks.ConfigError(f'{flag} must be positive integers separated by '
                             f'commas, got {",".join(values)!r}')
  return numbers


def run(main: Callable[[list[str]], int | None],
        user_kinds: tuple[type[BaseException], ...] = ()) -> None:
  """`app.run(main)` with one-line user errors. `user_kinds`: more error
  types that are the user's wherever `main` raises them (e.g.
  FileNotFoundError for a command that only reads what its flags name)."""

  def guarded(argv: list[str]) -> int | None:
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}; flags are written --name=value')
    try:
      return main(argv)
    except (checks.ConfigError, app.UsageError, *user_kinds) as error:
      fail(checks.describe(error))

  app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags into flags.FLAGS; a mistake fails as one line."""
  try:
    rest = flags.FLAGS(argv)
  except _FLAG_ERRORS as error:
    fail(_flag_message(error, argv))
  _check_configs_loaded()
  return rest


def _flag_message(error: BaseException, argv: list[str]) -> str:
  """The error, led by the flag that caused it when it does not say."""
  message = checks.describe(error)
  required = re.search(r'Flag (--\S+) must have a value other than None',
                       message)
  if required:
    return f'{required.group(1)} is required'
  field = re.match(r"no config field '([^']+)'", message)
  if field:
    for arg in argv[1:]:
      name = arg.split('=', 1)[0]
      if name.startswith('--') and field.group(1) in name.split('.')[1:]:
        return f'{arg}: {message}'
  return message


def _check_configs_loaded() -> None:
  """A --config file that does not load is found at once, not when the
  config is first read (ml_collections defers that error)."""
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    try:
      path = config_flags.get_config_filename(flag)
    except (TypeError, flags.Error):  # not a config file flag, or not given
      continue
    try:
      getattr(flag.value, 'keys', None)
    except OSError as error:
      fail(f'--{name}={path}: {checks.describe(error)}')
