"""The template layer: forward, gradients, library learning, caches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax.cost import compiled_cost
from simmim_jax.models.template_layer import TemplateAttention
from simmim_jax.training import optim
from simmim_jax.training import steps
from tests import reference
from tests.test_templates import _normal
from tests.test_templates import _ragged_mask


def _template_config(**overrides):
  fields = dict(vocab_size=17, d_model=32, num_heads=4, num_layers=2,
                mlp_dim=48, max_len=64, segment_len=8,
                attention_kind='templates', num_templates=5)
  fields.update(overrides)
  return simmim_jax.ModelConfig(**fields)


@pytest.mark.parametrize('family', ['simmim', 'transformer'])
def test_layer_forward_is_hard_template_attention(rng, family):
  from flax import linen as nn
  cfg = _template_config(family=family)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 21, 4, 8)), jnp.float32)
             for _ in range(3))
  mask = jnp.arange(21)[None] < jnp.asarray([[21], [13]])
  layer = TemplateAttention(cfg)
  params = nn.unbox(jax.jit(layer.init)(jax.random.key(0), q, k, v,
                                        mask)['params'])
  got = jax.jit(layer.apply)({'params': params}, q, k, v, mask)
  library = params['library']
  assignments = simmim_jax.assign_templates(q, library)
  if family == 'transformer':
    want = simmim_jax.template_attention(library, assignments, k, v,
                                         mask=mask)
  else:
    want = simmim_jax.segment_template_attention(library, assignments, k, v,
                                                 8, mask=mask)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('update', ['vq', 'ema'])
def test_task_gradient_reaches_queries_and_vq_library(rng, update):
  from flax import linen as nn
  cfg = _template_config(template_update=update)
  model = simmim_jax.Classifier(cfg)
  tokens = jnp.asarray(rng.integers(0, 17, (2, 30)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)['params']
  grads = nn.unbox(jax.jit(jax.grad(
      lambda p: model.apply({'params': p}, tokens).sum()))(params))
  attention_grads = grads['encoder']['blocks']['attention']
  assert float(jnp.abs(attention_grads['query']['kernel']).sum()) > 0
  library_grad = float(jnp.abs(attention_grads['templates']['library']).sum())
  # EMA k-means moves the library itself; only VQ trains it by gradient.
  assert (library_grad > 0) == (update == 'vq')
  _, aux = jax.jit(lambda p: model.apply({'params': p}, tokens,
                                         mutable=['losses']))(params)
  (loss,) = aux['losses']['encoder']['blocks']['attention']['templates'][
      'templates']
  assert loss.shape == (2,) and np.all(np.asarray(loss) > 0)  # per layer


def test_padding_with_masked_tokens_changes_nothing(rng):
  model = simmim_jax.Classifier(_template_config())
  tokens = jnp.asarray(rng.integers(0, 17, (2, 22)), jnp.int32)
  padded = jnp.concatenate(
      [tokens, jnp.asarray(rng.integers(0, 17, (2, 19)), jnp.int32)], axis=1)
  mask = jnp.arange(41)[None].repeat(2, 0) < 22
  params = jax.jit(model.init)(jax.random.key(0), padded, mask)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(params, tokens),
                             apply(params, padded, mask), atol=2e-5)


def test_template_config_errors():
  with pytest.raises(ValueError, match='template_update must be one of'):
    _template_config(template_update='sgd')
  with pytest.raises(ValueError, match='template_decay must be in'):
    _template_config(template_decay=1.0)
  with pytest.raises(ValueError, match='reseed_threshold must be >= 0'):
    _template_config(reseed_threshold=-1.0)
  with pytest.raises(ValueError, match='num_templates must be a positive'):
    _template_config(num_templates=0)
  with pytest.raises(ValueError, match='attention_kind must be one of'):
    _template_config(attention_kind='linear')


def _layer_step(cfg, library, q, k, v, mask, seed=0):
  """One training-mode call of the template layer: (stats, library update)."""
  layer = TemplateAttention(cfg)
  variables = jax.jit(layer.init)(jax.random.key(0), q, k, v, mask)
  variables = {**variables, 'params': {'library': library}}
  _, updated = jax.jit(lambda variables, key: layer.apply(
      variables, q, k, v, mask, rngs={'templates': key},
      mutable=['template_stats', 'param_updates']))(
          variables, jax.random.key(seed))
  return updated['template_stats'], updated['param_updates']['library']


def test_ema_mode_moves_templates_to_their_queries_mean(rng):
  cfg = _template_config(template_update='ema', reseed_threshold=0.0,
                         template_decay=0.9)
  q, k, v = (_normal(rng, (2, 24, 4, 8)) for _ in range(3))
  mask = _ragged_mask(rng, 2, 24)
  library = _normal(rng, (4, 5, 8))
  library = library.at[:, 4].set(100.0)  # never the nearest
  stats, update = _layer_step(cfg, library, q, k, v, mask)
  assignments = simmim_jax.assign_templates(q, library)
  sizes, sums, moved = reference.ema_kmeans_update(
      np.zeros((4, 5)), np.zeros((4, 5, 8)), q, np.asarray(assignments), 0.9,
      mask)
  np.testing.assert_allclose(stats['usage'], sizes, rtol=1e-6)
  np.testing.assert_allclose(stats['cluster_sums'], sums, rtol=1e-5,
                             atol=1e-6)
  assert int(stats['updates']) == 1
  new_library = np.asarray(library + update)
  live = sizes > 0
  np.testing.assert_allclose(new_library[live], moved[live], rtol=1e-4,
                             atol=1e-4)
  # An unused template stays where it was instead of collapsing to 0.
  np.testing.assert_array_equal(new_library[~live], np.asarray(library)[~live])
  assert (~live).sum() >= 4


@pytest.mark.parametrize('update', ['vq', 'ema'])
def test_dead_templates_are_reseeded_from_real_queries(rng, update):
  cfg = _template_config(template_update=update, reseed_threshold=1.0)
  q, k, v = (_normal(rng, (2, 24, 4, 8)) for _ in range(3))
  mask = _ragged_mask(rng, 2, 24)
  library = _normal(rng, (4, 5, 8)).at[:, 4].set(100.0)
  stats, update_value = _layer_step(cfg, library, q, k, v, mask)
  new_library = np.asarray(library + update_value)
  real_q = np.asarray(q)[np.asarray(mask)]  # [real positions, heads, dim]
  for h in range(4):
    # library + (query - library) in float32: exact up to rounding.
    matches = np.all(np.isclose(real_q[:, h], new_library[h, 4], atol=1e-4),
                     axis=-1)
    assert matches.any(), h
  # Debiased usage of a re-seeded template restarts at the threshold.
  np.testing.assert_allclose(np.asarray(stats['usage'])[:, 4] / 0.01, 1.0,
                             rtol=1e-5)
  if update == 'vq':  # the live templates are left to the optimizer
    live = np.asarray(stats['usage']) / 0.01 >= 1.0
    live[:, 4] = False
    np.testing.assert_array_equal(np.asarray(update_value)[live], 0.0)


@pytest.mark.parametrize('update', ['vq', 'ema'])
def test_train_steps_update_library_and_stats(rng, update):
  from flax import linen as nn
  import optax
  cfg = _template_config(template_update=update, num_layers=2)
  model = simmim_jax.Classifier(cfg)
  batch = {'tokens': jnp.asarray(rng.integers(0, 17, (4, 24)), jnp.int32),
           'mask': jnp.arange(24)[None].repeat(4, 0) < 20,
           'label': jnp.asarray([0, 1, 1, 0]), 'weight': jnp.ones(4)}
  variables = jax.jit(model.init)(jax.random.key(0), batch['tokens'],
                                  batch['mask'])
  state = steps.TrainState.create(
      apply_fn=model.apply, params=nn.unbox(variables['params']),
      tx=optax.adamw(1e-3, mask=optim.decay_mask),
      model_state=steps.model_state(variables))
  step = jax.jit(steps.make_train_step('classification'))
  metrics = steps.empty_metrics()
  path = ('encoder', 'blocks', 'attention', 'templates')
  library = lambda s: s.params['encoder']['blocks']['attention']['templates'][
      'library']
  before = library(state)
  for _ in range(3):
    state, metrics = step(state, batch, metrics, jax.random.key(1))
  stats = state.model_state['template_stats']
  for name in path:
    stats = stats[name]
  np.testing.assert_array_equal(stats['updates'], [3, 3])  # one per layer
  assert np.all(np.isfinite(np.asarray(library(state))))
  assert not np.allclose(library(state), before)
  if update == 'ema':  # every live template is its queries' EMA mean
    sizes = np.asarray(stats['usage'])
    total = sizes.sum(-1, keepdims=True)
    smoothed = (sizes + 1e-5) / (total + 5e-5) * total
    means = np.asarray(stats['cluster_sums']) / smoothed[..., None]
    live = sizes > 0
    np.testing.assert_allclose(np.asarray(library(state))[live], means[live],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('family', ['simmim', 'transformer'])
def test_layer_cache_answers_new_queries_from_the_context(rng, family):
  from flax import linen as nn
  cfg = _template_config(family=family)
  context = [_normal(rng, (2, 21, 4, 8)) for _ in range(3)]
  mask = jnp.arange(21)[None] < jnp.asarray([[21], [13]])
  layer = TemplateAttention(cfg)
  params = nn.unbox(jax.jit(layer.init)(jax.random.key(0), *context,
                                        mask)['params'])
  _, cache = jax.jit(lambda p, *context: layer.apply(
      {'params': p}, *context, mask, mutable=['template_memory']))(
          params, *context)
  new_q, new_k, new_v = (_normal(rng, (2, 16, 4, 8)) for _ in range(3))
  got = jax.jit(layer.apply)({'params': params, **cache}, new_q, new_k, new_v,
                             None)
  library = params['library']
  _, k, v = context
  if family == 'transformer':
    outputs = simmim_jax.template_outputs(library, k, v, mask=mask)
    want = simmim_jax.query_template_cache(outputs, new_q, library)
  else:  # position t reads the context's segment t // 8
    outputs = simmim_jax.segment_template_outputs(library, k, v, 8, mask=mask)
    want = simmim_jax.query_template_cache(outputs, new_q, library,
                                           segment_len=8)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='template memory holds 2 contexts'):
    layer.apply({'params': params, **cache}, *(x[:1] for x in context), None)


@pytest.mark.parametrize('family', ['simmim', 'transformer'])
def test_model_cache_equals_uncached_and_skips_the_work(rng, family):
  model = simmim_jax.Classifier(_template_config(family=family, max_len=512,
                                                 segment_len=64))
  tokens = jnp.asarray(rng.integers(0, 17, (2, 512)), jnp.int32)
  mask = jnp.arange(512)[None] < jnp.asarray([[512], [300]])
  params = jax.jit(model.init)(jax.random.key(0), tokens, mask)['params']
  cache = jax.jit(lambda p, t, m: simmim_jax.build_cache(model, p, t, m))(
      params, tokens, mask)
  cached = jax.jit(lambda p, c, t, m: simmim_jax.apply_with_cache(
      model, p, c, t, m))
  # Equal up to float32 rounding: XLA fuses the two programs differently.
  np.testing.assert_allclose(cached(params, cache, tokens, mask),
                             jax.jit(model.apply)({'params': params}, tokens,
                                                  mask), rtol=1e-5, atol=1e-6)
  plain_flops = compiled_cost(lambda p, t, m: model.apply({'params': p}, t, m),
                              params, tokens, mask)['flops']
  cached_flops = compiled_cost(lambda p, c, t, m: simmim_jax.apply_with_cache(
      model, p, c, t, m), params, cache, tokens, mask)['flops']
  assert cached_flops < plain_flops, (cached_flops, plain_flops)
  with pytest.raises(ValueError, match="serves head 'classifier'"):
    simmim_jax.build_cache(simmim_jax.CausalLM(_template_config(head='lm')),
                           params, tokens)
