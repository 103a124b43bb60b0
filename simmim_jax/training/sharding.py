"""Device mesh and shardings: parameters by logical-axis rules, batch by data.

The mesh has axes ('data', 'model'). Parameters carry logical axis names
(see `layers.py`); `config.mesh.rules` maps each name to a mesh axis or None
(replicated). The same code runs on 1 CPU, a GPU, or a TPU pod slice.
"""

import math
from typing import Any, Optional, Sequence

from absl import logging
from flax import linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

MESH_AXES = ('data', 'model')


def default_rules() -> list[tuple[str, Any]]:
  """Megatron-style tensor parallelism over 'model', batch over 'data'."""
  return [
      ('batch', 'data'),
      ('mlp', 'model'),
      ('heads', 'model'),
      ('vocab', 'model'),
      ('embed', None),
      ('kv', None),
      ('layers', None),
  ]


def create_mesh(shape: Sequence[int]) -> Mesh:
  """A ('data', 'model') mesh; one -1 entry takes the remaining devices.

  On one process the mesh may use the first devices only (its size must
  divide the device count); on several it must use every device.
  """
  shape = [int(s) for s in shape]
  num_devices = jax.device_count()
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'mesh.shape must have {len(MESH_AXES)} entries '
                     f'{MESH_AXES}, got {shape}')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'mesh.shape entries must be positive, with at most one '
                     f'-1, got {shape}')
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f'mesh.shape {shape}: {known} does not divide the '
                       f'{num_devices} devices')
    shape[shape.index(-1)] = num_devices // known
  size = math.prod(shape)
  if num_devices % size or (jax.process_count() > 1 and size != num_devices):
    raise ValueError(f'mesh.shape {shape} needs {size} devices, which does '
                     f'not fit the {num_devices} available')
  devices = np.asarray(jax.devices()[:size]).reshape(shape)
  return Mesh(devices, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh:
  return create_mesh(config.mesh.shape)


def state_shardings(abstract_boxed_state: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for the unboxed state, from its logical axis names.

  A dimension its mesh axis does not divide (the 17-row embedding of a
  16-token vocabulary plus the mask token, on a model axis of 2) is
  replicated instead, with a warning naming the parameter.
  """
  specs = nn.get_partition_spec(abstract_boxed_state)
  shardings = nn.logical_to_mesh_sharding(specs, mesh,
                                          [tuple(r) for r in rules])
  by_path = dict(jax.tree_util.tree_leaves_with_path(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)))

  def leaf_sharding(path, leaf):
    sharding = by_path[path]
    spec = list(sharding.spec)
    for index, (dim, axis) in enumerate(zip(leaf.shape, spec)):
      axes = axis if isinstance(axis, tuple) else (axis,)
      size = math.prod(mesh.shape[a] for a in axes if a is not None)
      if dim % size:
        logging.warning(
            'parameter %s of shape %s: dimension %d is not divisible by mesh '
            'axis %s of size %d; replicated over it instead',
            jax.tree_util.keystr(path), leaf.shape, index, axis, size)
        spec[index] = None
    if spec == list(sharding.spec):
      return sharding
    return NamedSharding(mesh, P(*spec))

  # Mapped over the unboxed state, so leafless nodes (optax's MaskedNode)
  # keep their place instead of receiving a sharding.
  return jax.tree_util.tree_map_with_path(leaf_sharding,
                                          nn.unbox(abstract_boxed_state))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest replicated."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray],
                 mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global arrays sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins a multi-process run; call before any other jax work.

  On TPU pods and managed clusters every argument can be None (detected).
  CPU processes exchange collectives through gloo.
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)
