"""Forward pass with the batch sharded over 8 CPU devices == one device."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import simmim_jax


@pytest.mark.parametrize('head', ['classifier', 'lm'])
def test_batch_sharded_forward_matches_single_device(rng, head):
  if jax.device_count() < 8:
    pytest.skip('needs XLA_FLAGS=--xla_force_host_platform_device_count=8')
  cfg = simmim_jax.ModelConfig(vocab_size=11, head=head, d_model=32,
                               num_heads=4, num_layers=2, mlp_dim=64,
                               max_len=40, segment_len=8)
  model = simmim_jax.build_model(cfg)
  tokens = jnp.asarray(rng.integers(0, 11, size=(8, 40)), jnp.int32)
  mask = jnp.arange(40)[None] < jnp.asarray(rng.integers(1, 41, (8, 1)))
  params = jax.jit(model.init)(jax.random.key(0), tokens, mask)
  single = jax.jit(model.apply)(params, tokens, mask)

  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  batch = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  sharded_apply = jax.jit(model.apply,
                          in_shardings=(replicated, batch, batch),
                          out_shardings=batch)
  sharded_tokens = jax.device_put(tokens, batch)
  out = sharded_apply(jax.device_put(params, replicated), sharded_tokens,
                      jax.device_put(mask, batch))
  assert len(out.sharding.device_set) == 8
  assert out.addressable_shards[0].data.shape[0] == 1
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), rtol=1e-5,
                             atol=1e-5)
