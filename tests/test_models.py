"""Behaviour of the models: padding, causality, remat, jit, bad input."""

import dataclasses

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax import ModelConfig
from simmim_jax.models.attention_maps import attention_maps
from tests.random_params import random_params

FAMILIES = ('simmim', 'local', 'transformer')


def _config(**overrides):
  fields = dict(vocab_size=17, d_model=32, num_heads=4, num_layers=2,
                mlp_dim=48, max_len=64, segment_len=4, aggregator='concat')
  fields.update(overrides)
  return ModelConfig(**fields)


def _tokens(rng, batch, length, vocab=17):
  return jnp.asarray(rng.integers(0, vocab, size=(batch, length)), jnp.int32)


def _init(model, *args):
  """Seeded random parameters of init's shapes (the other collections init
  makes are only read by an apply that may change them)."""
  return random_params(model, *args)


# Each family once and each aggregator once: pooling does not depend on the
# family (test_hierarchy.py pads every aggregator on its own). The last case
# has more states per segment than the partial segment has real tokens.
@pytest.mark.parametrize('family, aggregator, levers', [
    *zip(FAMILIES, sorted(simmim_jax.AGGREGATORS), [{}] * 3),
    ('simmim', 'concat', {'states_per_segment': 3,
                          'state_readout': 'attend'})])
def test_padding_with_masked_tokens_changes_nothing(rng, family, aggregator,
                                                    levers):
  cfg = _config(family=family, aggregator=aggregator, **levers)
  classifier = simmim_jax.Classifier(cfg)
  tokens = _tokens(rng, 2, 22)
  padded = jnp.concatenate([tokens, _tokens(rng, 2, 19)], axis=1)
  mask = jnp.arange(41)[None].repeat(2, 0) < 22
  params = _init(classifier, padded, mask)

  def encode_and_classify(t, m):
    outputs = classifier.apply(params, t, m,
                               method=lambda mdl, t, m: mdl.encoder(t, m))
    return outputs, classifier.apply(params, t, m)

  # One program (one compile) for both lengths.
  (outputs, logits), (padded_outputs, padded_logits) = jax.jit(
      lambda: (encode_and_classify(tokens, None),
               encode_and_classify(padded, mask)))()
  np.testing.assert_allclose(outputs, padded_outputs[:, :22], atol=2e-5)
  np.testing.assert_allclose(logits, padded_logits, atol=2e-5)


def _zero_perturbations(model, params, *args):
  """The 'perturbations' an apply creates (zeros), from their shapes alone:
  jax.eval_shape compiles nothing."""
  shapes = jax.eval_shape(lambda params: model.apply(
      params, *args, mutable='perturbations'), params)[1]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      shapes['perturbations'])


def _input_gradients(models, tokens):
  """[length_out, length_in] per model: |d output_t / d embedding_j| summed.

  Every model's Jacobian in one jitted program: one compile, not one per
  model (nor every operation compiled on its own). Each model gets its own
  parameters: nothing of one model's computation is shared with another's.
  """
  def jacobian(model, params, perturbations):
    def output_norms(p):
      logits = model.apply({**params, 'perturbations': p}, tokens)
      return logits[0].sum(axis=-1)  # [length]
    return jax.jacrev(output_norms)(perturbations)['encoder']['embeddings']

  all_params = [_init(model, tokens) for model in models]
  jacobians = jax.jit(lambda all_params, all_perturbations: [
      jacobian(*args) for args in zip(models, all_params,
                                      all_perturbations)])(
          all_params, [_zero_perturbations(model, params, tokens)
                       for model, params in zip(models, all_params)])
  return [np.abs(np.asarray(jac[:, 0])).sum(axis=-1)  # [out, in]
          for jac in jacobians]


# (family, attention_kind, the SimMIM state levers).
LM_CASES = [(family, kind, ()) for family in FAMILIES
            for kind in ('softmax', 'templates')]
LM_CASES += [('simmim', 'softmax', (('states_per_segment', 2),)),
             ('simmim', 'softmax', (('states_per_segment', 3),
                                    ('state_readout', 'attend')))]


@pytest.fixture(scope='module')
def lm_influences():
  """{LM_CASES entry: _input_gradients of its CausalLM} on 18 tokens: 4
  full segments and a partial one."""
  tokens = _tokens(np.random.default_rng(0), 1, 18)
  models = [simmim_jax.CausalLM(_config(
      family=family, head='lm', num_layers=2, attention_kind=kind,
      num_templates=3, **dict(levers))) for family, kind, levers in LM_CASES]
  return dict(zip(LM_CASES, _input_gradients(models, tokens)))


@pytest.mark.parametrize('family, attention_kind, levers', LM_CASES, ids=str)
def test_lm_is_causal_by_gradients(lm_influences, family, attention_kind,
                                   levers):
  influence = lm_influences[family, attention_kind, levers]
  future = np.triu(np.ones_like(influence, bool), k=1)
  assert np.all(influence[future] == 0.0), 'an output depends on the future'
  assert np.all(np.diag(influence) > 0)
  # Only segment states carry information across segment boundaries.
  segment = np.arange(18) // 4
  earlier_segment = segment[None, :] < segment[:, None]
  if family == 'local':
    assert np.all(influence[earlier_segment] == 0.0)
  else:
    assert np.all(influence[earlier_segment] > 0)


@pytest.mark.parametrize('family', ['simmim', 'local'])
def test_states_carry_information_between_segments(rng, family):
  cfg = _config(family=family, num_layers=1)
  model = simmim_jax.Encoder(cfg)
  tokens = _tokens(rng, 1, 16)
  params = _init(model, tokens)['params']
  zeros = {'perturbations': _zero_perturbations(
      model, {'params': params}, tokens)}

  def out(p):
    return model.apply({'params': params, **p}, tokens)[0, :4].sum()

  grad = jax.jit(jax.grad(out))(zeros)['perturbations']['embeddings'][0]
  other_segments = np.abs(np.asarray(grad[4:])).sum()
  assert (other_segments > 0) == (family == 'simmim')


@pytest.mark.parametrize('head', ['classifier', 'lm'])
def test_remat_equals_no_remat(rng, head):
  cfg = _config(head=head, dropout_rate=0.0)
  tokens = _tokens(rng, 2, 13)
  models = [simmim_jax.build_model(dataclasses.replace(cfg, remat=policy))
            for policy in ('none', 'full', 'projections')]
  params = _init(models[0], tokens)

  def loss_and_grad(m, params, tokens):
    return jax.value_and_grad(lambda p: m.apply(p, tokens).sum())(params)

  # One program (one compile) for the three models. Each gets its own copy
  # of the arguments, so XLA cannot share any computation between them.
  (loss, grads), *rematerialised = jax.jit(
      lambda args: [loss_and_grad(m, p, t) for m, (p, t) in zip(models, args)])(
          [(jax.tree.map(np.copy, params), np.copy(tokens))
           for _ in models])
  for remat_loss, remat_grads in rematerialised:
    np.testing.assert_allclose(loss, remat_loss, rtol=1e-6)
    chex.assert_trees_all_close(grads, remat_grads, rtol=1e-4, atol=1e-5)
  # Configs saved before the policies had names read True / False.
  assert dataclasses.replace(cfg, remat=True).remat == 'full'
  assert dataclasses.replace(cfg, remat=False).remat == 'none'


class JitTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    # Shared by both variants: the model, its inputs and the jitted outputs.
    super().setUpClass()
    rng = np.random.default_rng(3)
    cls.model = simmim_jax.Classifier(_config(aggregator='attention'))
    cls.tokens = _tokens(rng, 2, 30)
    cls.mask = jnp.arange(30)[None].repeat(2, 0) < jnp.asarray([[30], [17]])
    cls.params = _init(cls.model, cls.tokens, cls.mask)
    # Jitted; the variant without jit is the one compared with it.
    cls.want = jax.jit(cls.model.apply)(cls.params, cls.tokens, cls.mask)

  @chex.variants(with_jit=True, without_jit=True)
  def test_classifier(self):
    got = self.variant(self.model.apply)(self.params, self.tokens, self.mask)
    np.testing.assert_allclose(got, self.want, rtol=1e-5, atol=1e-5)


def test_dual_encoder_is_symmetric_in_shared_features(rng):
  cfg = _config(head='dual_encoder', num_classes=3)
  model = simmim_jax.DualEncoderClassifier(cfg)
  a, b = _tokens(rng, 2, 12), _tokens(rng, 2, 20)
  params = _init(model, a, b)

  def run(a, b):  # one program (one compile) for the three applies
    def enc(t):
      return model.apply(params, t, method=model.encode)
    return model.apply(params, a, b), enc(a)[0], enc(a[:1])[0]

  logits, encoded, encoded_alone = jax.jit(run)(a, b)
  assert logits.shape == (2, 3)
  # One encoder serves both inputs: encoding is the same whichever side.
  np.testing.assert_allclose(encoded, encoded_alone, atol=1e-5)
  assert 'encoder' in params['params'] and len(params['params']) == 3


@pytest.mark.parametrize('family', FAMILIES)
def test_bfloat16_and_dropout(rng, family):
  cfg = _config(family=family, dtype='bfloat16', dropout_rate=0.1)
  model = simmim_jax.Classifier(cfg)
  tokens = _tokens(rng, 2, 24)
  params = _init(model, tokens)
  # One program (one compile) for both modes.
  eval_out, train_out = jax.jit(lambda params, tokens: (
      model.apply(params, tokens),
      model.apply(params, tokens, deterministic=False,
                  rngs={'dropout': jax.random.key(5)})))(params, tokens)
  assert np.all(np.isfinite(np.float32(eval_out)))
  assert not np.allclose(np.float32(eval_out), np.float32(train_out))


def test_parameters_are_scanned_and_named():
  cfg = _config(num_layers=3, per_level_weights=True)
  variables = _init(simmim_jax.Classifier(cfg), jnp.zeros((1, 64), jnp.int32))
  boxes = jax.tree.leaves(variables['params'],
                          is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(b, nn.Partitioned) for b in boxes)
  for box in boxes:
    assert len(box.names) == box.value.ndim
  blocks = variables['params']['encoder']['blocks']
  assert blocks['attention']['query']['kernel'].names[0] == 'layers'
  assert blocks['attention']['query']['kernel'].value.shape[0] == 3
  assert variables['params']['pool']['kernel'].value.shape[0] == cfg.max_levels
  assert 'state_merge' in blocks


def test_ablation_switches_change_parameters_and_outputs(rng):
  tokens = _tokens(rng, 1, 40)
  base = _config()

  def param_shapes(**change):
    model = simmim_jax.Classifier(dataclasses.replace(base, **change))
    return jax.eval_shape(model.init, jax.random.key(0), tokens)['params']

  # Random parameters of each variant's shapes, seeded by their names (so
  # the parameters variants share are equal: _init), and one program (one
  # compile) applying every variant.
  changes = ({}, {'exclude_self': False}, {'ffn_merge': False},
             {'segment_states': False}, {'per_level_weights': False},
             {'num_levels': 1}, {'pooling': 'mean'},
             {'positions': 'sinusoidal'}, {'state_key_dim': 8},
             {'states_per_segment': 2}, {'state_readout': 'attend'})
  models = [simmim_jax.Classifier(dataclasses.replace(base, **change))
            for change in changes]
  outputs = jax.jit(lambda all_params: [
      model.apply(params, tokens)
      for model, params in zip(models, all_params)])(
          [_init(model, tokens) for model in models])
  base_out = outputs[0]
  for change, out in zip(changes[1:], outputs[1:]):
    assert not np.allclose(out, base_out), change
  assert 'merge_ffn' in param_shapes()['encoder']['blocks']['state_merge']
  assert 'merge_ffn' not in param_shapes(ffn_merge=False)['encoder'][
      'blocks']['state_merge']
  assert param_shapes()['pool']['kernel'].value.ndim == 3
  assert param_shapes(per_level_weights=False)['pool'][
      'kernel'].value.ndim == 2


def test_the_attention_kernel_changes_no_output(rng):
  # On CPU the default is the loop; 'xla' is the batch of dense segments
  # the other backends fall back to (tests/test_attention_kernels.py has
  # cuDNN's wrapper and splash against the reference).
  tokens = _tokens(rng, 2, 22)
  mask = jnp.asarray(np.arange(22)[None] < np.array([[22], [9]]))
  models, args = [], []
  for family, model_class in (('simmim', simmim_jax.Classifier),
                              ('transformer', simmim_jax.CausalLM)):
    cfg = _config(family=family, head=('classifier' if family == 'simmim'
                                       else 'lm'))
    pair = [model_class(dataclasses.replace(cfg, attention_implementation=k))
            for k in (None, 'xla')]
    params = _init(pair[0], tokens)
    models += pair
    args += [params, params]
  outputs = jax.jit(lambda all_params: [
      m.apply(p, tokens, mask) for m, p in zip(models, all_params)])(args)
  for default, xla in zip(outputs[::2], outputs[1::2]):
    np.testing.assert_allclose(default, xla, rtol=1e-5, atol=1e-5)
  # The field reaches the op: cuDNN refuses this CPU.
  cudnn = dataclasses.replace(models[-1].config,
                              attention_implementation='cudnn')
  with pytest.raises(ValueError, match="GPU backend, this is 'cpu'"):
    simmim_jax.CausalLM(cudnn).apply(args[-1], tokens, mask)


def test_bad_model_inputs(rng):
  cfg = _config()
  model = simmim_jax.Classifier(cfg)
  params = _init(model, _tokens(rng, 1, 8))
  with pytest.raises(ValueError, match='id 17, outside'):
    model.apply(params, jnp.full((1, 8), 17, jnp.int32))
  with pytest.raises(ValueError, match='id -1, outside'):
    model.apply(params, jnp.full((1, 8), -1, jnp.int32))
  with pytest.raises(ValueError, match='exceeds max_len 64'):
    model.apply(params, jnp.zeros((1, 65), jnp.int32))
  with pytest.raises(ValueError, match='tokens must have rank 2'):
    model.apply(params, jnp.zeros((8,), jnp.int32))
  with pytest.raises(ValueError, match='integer token ids'):
    model.apply(params, jnp.zeros((1, 8), jnp.float32))
  with pytest.raises(ValueError, match=r'mask must have shape \(1, 8\)'):
    model.apply(params, jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 7), bool))


@pytest.mark.parametrize('change,message', [
    ({'d_model': 0}, 'd_model must be a positive integer'),
    ({'num_heads': 5}, 'divisible by num_heads'),
    ({'segment_len': 128}, r'segment_len \(128\) exceeds max_len'),
    ({'family': 'mamba'}, "family must be one of"),
    ({'aggregator': 'max'}, "unknown aggregator 'max'"),
    ({'pooling': 'cls'}, 'pooling must be one of'),
    ({'dropout_rate': 1.0}, 'dropout_rate'),
    ({'num_levels': 0}, 'num_levels'),
    ({'dtype': 'float8'}, 'dtype must be one of'),
    ({'attention_implementation': 'flash'},
     'attention_implementation must be one of'),
    ({'remat': 'yes'}, r"remat must be one of \['none', 'full', 'proj"),
])
def test_bad_config(change, message):
  with pytest.raises(ValueError, match=message):
    _config(**change)


def test_unknown_config_field():
  with pytest.raises(ValueError, match=r"unknown model config field\(s\) "
                     r"\['segment_length'\]"):
    ModelConfig.from_dict({'vocab_size': 4, 'segment_length': 8})
  assert ModelConfig.from_dict({'vocab_size': 4}).segment_len == 128


def test_program_size_does_not_grow_with_depth(rng):
  tokens = _tokens(rng, 1, 16)

  def num_equations(num_layers):
    model = simmim_jax.Classifier(_config(num_layers=num_layers))
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)
    jaxpr = jax.make_jaxpr(model.apply)(params, tokens)
    return len(jaxpr.jaxpr.eqns), str(jaxpr).count('scan[')

  (two, scans), (twelve, _) = num_equations(2), num_equations(12)
  assert two == twelve and scans >= 1


@pytest.mark.parametrize('family,head', [('simmim', 'classifier'),
                                         ('simmim', 'lm'),
                                         ('transformer', 'classifier')])
def test_attention_maps(rng, family, head):
  cfg = _config(family=family, head=head, num_layers=2)
  model = simmim_jax.build_model(cfg)
  tokens = _tokens(rng, 2, 14)
  mask = jnp.arange(14)[None] < jnp.asarray([[14], [9]])
  params = _init(model, tokens, mask)
  maps = jax.jit(lambda params, tokens, mask: attention_maps(
      model, params, tokens, mask, layer=1))(params, tokens, mask)
  segment = np.asarray(maps['segment'])
  if family == 'transformer':
    assert segment.shape == (2, 1, 4, 14, 14) and maps['state'] is None
    return
  assert segment.shape == (2, 4, 4, 4, 4)
  # Rows of real queries sum to one; masked keys get nothing.
  np.testing.assert_allclose(segment[0].sum(-1), 1.0, rtol=1e-5)
  assert np.all(segment[1, 2, :, :, 1:] == 0)  # tokens 9.. are padding
  state = np.asarray(maps['state'])
  assert state.shape == (2, 4, 4)
  if head == 'lm':
    assert np.all(np.triu(state[0]) == 0)  # earlier states only
    assert np.all(np.triu(segment[0], k=1) == 0)
  else:
    assert np.all(np.diagonal(state, axis1=1, axis2=2) == 0)
  with pytest.raises(ValueError, match='layer must be in'):
    attention_maps(model, params, tokens, mask, layer=2)
