"""A training run's first phases: set up, create the state, jit the steps.

  run = setup_run(config, workdir)  # RunSetup: config, data, model, mesh
  state, start_step, shardings = create_state(run, init_key, checkpointer,
                                              train_iter)
  jitted = jit_steps(run, shardings)  # JitSteps: the compiled steps

State is created sharded (eval_shape -> shardings -> jit(init)); the train
step is one jit over a ('data', 'model') mesh.
"""

import dataclasses
import logging
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simmim_jax import data
from simmim_jax.checks import ConfigError
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.models import build_model
from simmim_jax.ops import masking
from simmim_jax.training import checkpoints
from simmim_jax.training import distill
from simmim_jax.training import experiment_config
from simmim_jax.training import optim
from simmim_jax.training import run_dir
from simmim_jax.training import sharding
from simmim_jax.training import steps


def model_config(config: ml_collections.ConfigDict,
                 datasets: data.Datasets) -> ModelConfig:
  """The ModelConfig a run of `config` on `datasets` builds (the objective
  of its init_from run decides whether a mask token is added)."""
  return experiment_config.model_config(
      config, datasets,
      init_objective=run_dir.saved_objective(config.init_from))


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What every phase of a run reads."""
  config: ml_collections.ConfigDict
  workdir: str  # absolute
  datasets: data.Datasets
  model_config: ModelConfig
  model: nn.Module
  mesh: jax.sharding.Mesh
  masking_spec: Optional[masking.MaskingSpec]  # objective 'masked' only
  baseline_id: int  # masked: the most frequent input token; else -1
  start_time: float  # time.time() once the config is valid

  @property
  def task(self) -> str:
    return self.datasets.task

  @property
  def step_task(self) -> str:
    """What the steps compute: the data's task, or masked-token prediction."""
    return 'masked' if self.masking_spec is not None else self.task


def setup_run(config: ml_collections.ConfigDict, workdir: str) -> RunSetup:
  """Validates `config` and builds the data, the model and the mesh; a bad
  field raises ConfigError (a ValueError) before anything is written."""
  experiment_config.validate_config(config)
  start_time = time.time()
  datasets = data.create_datasets(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed)
  cfg = model_config(config, datasets)
  model = build_model(cfg)
  spec, baseline_id = _masking(config, datasets, cfg)
  mesh = sharding.mesh_from_config(config)
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % mesh.shape['data']:
      raise ConfigError(f"{name} {config[name]} is not divisible by the "
                        f"mesh's data axis ({mesh.shape['data']})")
  return RunSetup(config, os.path.abspath(workdir), datasets, cfg, model, mesh,
                  spec, baseline_id, start_time)


def _masking(config, datasets: data.Datasets, cfg: ModelConfig
             ) -> tuple[Optional[masking.MaskingSpec], int]:
  """(masking spec, baseline token id) of a masked run; (None, -1) else."""
  if config.objective != 'masked':
    return None, -1
  if datasets.task not in ('classification', 'dual'):
    raise ConfigError(f"objective='masked' needs a classification or dual "
                      f"task's inputs; this data's task is {datasets.task!r}")
  spec = masking.MaskingSpec(
      ratio=config.masking.ratio, mode=config.masking.mode,
      mean_span=config.masking.mean_span, segment_len=cfg.segment_len,
      mask_id=cfg.vocab_size - 1)
  return spec, datasets.most_frequent_input_token()


def dummy_inputs(cfg: ModelConfig, task: str) -> dict[str, jax.Array]:
  """A one-example batch of `task` at the model's lengths (for shapes)."""
  tokens = jnp.zeros((1, cfg.max_len), jnp.int32)
  mask = jnp.ones((1, cfg.max_len), bool)
  batch = {'tokens': tokens, 'mask': mask}
  if task == 'dual':
    batch.update(other_tokens=tokens, other_mask=mask)
  if task == 'seq2seq':
    batch.update(targets=jnp.zeros((1, cfg.target_len), jnp.int32),
                 target_mask=jnp.ones((1, cfg.target_len), bool))
  return batch


def create_state(run: RunSetup, init_key: jax.Array,
                 checkpointer: checkpoints.Checkpointer, train_iter: Any
                 ) -> tuple[steps.TrainState, int, Any]:
  """(train state, the step it is at, its shardings); writes the run's
  config files.

  A new run starts from `init_key` (and config.init_from's parameters, if
  given); otherwise the latest checkpoint is restored, which also moves
  `train_iter` to where it was then.
  """
  init_state = _state_initializer(run)
  boxed = jax.eval_shape(init_state, init_key)
  state_sharding = sharding.state_shardings(boxed, run.mesh,
                                            run.config.mesh.rules)
  start_step = checkpointer.latest_step()
  if start_step is None:
    start_step = 0
    state = _fresh_state(run, init_state, init_key, state_sharding)
  else:
    logging.info('resuming from step %d', start_step)
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                             sharding=s),
        nn.unbox(boxed), state_sharding)
    state = checkpointer.restore(
        start_step, abstract_state, train_iter,
        config_changes=run_dir.model_config_changes(run.config, run.workdir))
  run_dir.save_config(run.config, run.workdir, run.model_config)
  return state, start_step, state_sharding


def _state_initializer(run: RunSetup) -> Callable[[jax.Array], Any]:
  """rng -> the boxed (logically annotated) initial train state."""
  tx = optim.make_optimizer(run.config)

  def init_state(rng):
    inputs = steps.model_inputs(dummy_inputs(run.model_config, run.task),
                                run.step_task)
    variables = run.model.init(rng, *inputs)
    return steps.TrainState.create(
        apply_fn=run.model.apply, params=variables['params'], tx=tx,
        model_state=steps.model_state(variables))
  return init_state


def _fresh_state(run: RunSetup, init_state, init_key, state_sharding):
  state = jax.jit(lambda r: nn.unbox(init_state(r)),
                  out_shardings=state_sharding)(init_key)
  if run.config.init_from:  # the optimizer state is still zeros: keep it
    state = state.replace(params=jax.device_put(
        distill.initial_params(run.config, run.model, run.datasets,
                               state.params),
        state_sharding.params))
  return state


class JitSteps(NamedTuple):
  """The compiled steps, and the sharding of what every device holds."""
  train: Callable  # (state, batch, sums, dropout_key) -> (state, sums)
  eval: Callable  # (params, batch, sums) -> sums
  replicated: jax.sharding.NamedSharding


def jit_steps(run: RunSetup, state_sharding: Any) -> JitSteps:
  """The train and eval steps, jitted over the run's mesh."""
  replicated = sharding.replicated(run.mesh)
  batch_sharding = sharding.batch_sharding(run.mesh)
  train_step = jax.jit(
      steps.make_train_step(run.task, run.config.label_smoothing,
                            run.masking_spec),
      in_shardings=(state_sharding, batch_sharding, replicated, replicated),
      out_shardings=(state_sharding, replicated), donate_argnums=(0, 2))
  eval_step = jax.jit(
      steps.make_eval_step(run.model.apply, run.task, run.masking_spec,
                           run.baseline_id),
      in_shardings=(state_sharding.params, batch_sharding, replicated),
      out_shardings=replicated, donate_argnums=(2,))
  return JitSteps(train_step, eval_step, replicated)
