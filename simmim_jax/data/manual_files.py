"""Files the user already has, read from a builder's manual_dir: their paths,
or an error that names what is missing and where to put it."""

from typing import Any

from simmim_jax import checks


def manual_dir(dl_manager: Any, dataset: str, needs: str) -> Any:
  """The manual_dir path of `dl_manager`; `needs` says what goes in it."""
  try:
    return dl_manager.manual_dir
  except AssertionError as e:  # TFDS: no manual_dir configured or present
    raise checks.MissingPathError(f'{dataset} needs {needs}: {e}') from None


def release_paths(dl_manager: Any, dataset: str, needs: str,
                  names: dict[str, str], instructions: str
                  ) -> dict[str, str]:
  """{split: path} of the files `names` ({split: file name}) in manual_dir;
  a MissingPathError lists every missing one, then `instructions`."""
  directory = manual_dir(dl_manager, dataset, needs)
  paths = {split: directory / name for split, name in names.items()}
  missing = [str(p) for p in paths.values() if not p.is_file()]
  if missing:
    raise checks.MissingPathError(
        f'{dataset}: missing {", ".join(missing)}. {instructions}')
  return {split: str(p) for split, p in paths.items()}
