"""Checkpoints: an orbax CheckpointManager in a run's checkpoint directory.

Each checkpoint holds the train state and the input iterator's position, so
a resumed run sees exactly the batches an uninterrupted one would. Saves are
asynchronous; a save killed half-way leaves only a temporary directory that
restore ignores, so the previous checkpoint stays usable.
"""

import os
from typing import Any, Optional, Sequence

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs in a directory
  (a run's: run_dir.checkpoints_dir(workdir))."""

  def __init__(self, directory: str, *, keep: int,
               best_metric: Optional[str] = None, best_mode: str = 'max'):
    """Keeps the last `keep` checkpoints, plus the best by `best_metric`."""
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(directory)
    kept = [policies.LatestN(keep)]
    if best_metric:
      kept.append(policies.BestN(get_metric_fn=lambda m: m[best_metric],
                                 reverse=best_mode == 'min', n=1,
                                 keep_checkpoints_without_metrics=False))
    preservation = policies.AnyPreservationPolicy(kept)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any,
           metrics: Optional[dict[str, float]] = None) -> None:
    """Starts an asynchronous save; metrics (if any) rank it for 'best'."""
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any, *,
              config_changes: Sequence[str] = ()) -> Any:
    """The state saved at `step` (sharded like `abstract_state`); the data
    iterator is moved to where it was at that step. `config_changes` (model
    fields changed since the run started) are named if shapes differ."""
    self.check_shapes(step, abstract_state, config_changes)
    try:
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as error:  # orbax raises many types for a bad directory
      raise RuntimeError(
          f'checkpoint {self.step_dir(step)} could not be restored ({error}). '
          'It is left untouched; move it aside to resume from an earlier '
          'checkpoint.') from error
    return restored.state

  def restore_params(self, step: int) -> Any:
    """The parameters saved at `step`, as saved, on the first local device
    (for initialising another model from them)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      saved = dict(self.manager.item_metadata(step)['state'])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          saved)
      restored = self.manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target)))
    except Exception as error:  # orbax raises many types for a bad directory
      raise RuntimeError(
          f'checkpoint {self.step_dir(step)} could not be restored ({error})'
      ) from error
    return restored.state['params']

  def check_shapes(self, step: int, abstract_state: Any,
                   config_changes: Sequence[str] = ()) -> None:
    """Raises ValueError if the saved parameters differ in shape."""
    try:
      saved = self.manager.item_metadata(step).state
    except Exception as error:
      raise RuntimeError(
          f'checkpoint {self.step_dir(step)} could not be restored: its '
          f'metadata is unreadable ({error}). It is left untouched; move it '
          'aside to resume from an earlier checkpoint.') from error
    want = _shapes(abstract_state.params)
    have = _shapes(saved['params'])
    diffs = sorted(set(want.items()) ^ set(have.items()))
    if diffs:
      changed = sorted({path for path, _ in diffs})
      raise ValueError(
          f'checkpoint {self.step_dir(step)} has parameters of other shapes '
          f'than this config builds (first differences: {changed[:5]}; model '
          f'config changes: {list(config_changes) or "none"}). Resume with '
          'the config the run saved or use a new workdir.')

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

