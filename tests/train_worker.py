"""A small ListOps training run, in-process or as a subprocess.

The resume, preemption and multi-process tests start this module as separate
processes:
  python -m tests.train_worker WORKDIR DATA_DIR NUM_STEPS [COORDINATOR PID N]
It trains, then saves the final parameters to WORKDIR/final_params.npz (per
process).
"""

import os
import sys

import jax
import numpy as np

from experiments.configs import listops
from simmim_jax.training import sharding
from simmim_jax.training import train


def small_config(data_dir: str, **overrides):
  """A model and schedule small enough for a test, on lra_listops/tiny."""
  config = listops.get_config('tiny')
  config.data.data_dir = data_dir
  config.data.prepare = False
  config.data.max_len = 64
  m = config.model
  m.d_model, m.num_heads, m.num_layers, m.mlp_dim, m.segment_len = (
      32, 2, 1, 64, 16)
  config.batch_size = 8
  config.eval_batch_size = 200
  config.num_steps = 6
  config.warmup_steps = 2
  config.log_every = 1
  config.eval_every = 3
  config.checkpoint_every = 2
  config.test_split = ''
  config.progress = False
  # One device: the mesh tests set mesh.shape themselves; data parallel over
  # the 8 fake CPU devices would compile and run 8 partitions of every step.
  config.mesh.shape = (1, 1)
  for name, value in overrides.items():
    target = config
    *parents, leaf = name.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def flat_params(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


def main(argv):
  workdir, data_dir, num_steps = argv[1], argv[2], int(argv[3])
  mesh_shape = (1, 1)
  if len(argv) > 4:  # multi-process: coordinator address, process id, count
    sharding.initialize_distributed(argv[4], num_processes=int(argv[6]),
                                    process_id=int(argv[5]))
    mesh_shape = (-1, 1)  # data parallel over every process's devices
  # Evaluations every 10 steps: the resume tests compare parameters and
  # logged steps; an evaluation every 3 steps cost a fifth of a worker.
  config = small_config(data_dir, num_steps=num_steps, eval_every=10,
                        **{'mesh.shape': mesh_shape})
  state, results = train.train_and_evaluate(config, workdir)
  print('RESULTS', results, flush=True)
  if not results.get('preempted'):
    np.savez(os.path.join(workdir, f'final_params_{jax.process_index()}.npz'),
             **flat_params(state.params))


if __name__ == '__main__':
  main(sys.argv)
