"""Generation: cached decoding equals the parallel pass; sampling; bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simmim_jax
from simmim_jax import ModelConfig
from simmim_jax.inference import decoding
from tests.random_params import random_params

VOCAB = 13
KINDS = [(family, 'softmax') for family in ('simmim', 'local', 'transformer')]
KINDS += [(family, 'templates') for family in ('simmim', 'transformer')]
# SimMIM's state levers: k states per segment (pending in the cache until
# their segment ends), and tokens attending over the cached states.
LEVERS = [(('states_per_segment', 2),),
          (('states_per_segment', 3), ('state_readout', 'attend'))]


@functools.lru_cache(maxsize=None)
def _lm(family, attention_kind, levers=()):
  cfg = ModelConfig(vocab_size=VOCAB, head='lm', family=family,
                    attention_kind=attention_kind, num_templates=3,
                    d_model=16, num_heads=2, num_layers=2, mlp_dim=32,
                    max_len=32, segment_len=4, **dict(levers))
  model = simmim_jax.CausalLM(cfg)
  params = random_params(model, jnp.zeros((1, 32), jnp.int32))['params']
  forward = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
  return model, params, forward


def _tokens(length, batch=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(
      0, VOCAB, (batch, length)), jnp.int32)


def _stepwise_logits(model, params, tokens, lengths, source=None):
  """[batch, length, vocab]: prefill over tokens[b, :lengths[b]], then one
  decode_step per later position; `source` (Seq2Seq): (tokens, mask)."""
  length, prefill_len = tokens.shape[1], int(lengths.max())

  @jax.jit
  def run(tokens, source):
    logits, cache = decoding.prefill(model, params, tokens[:, :prefill_len],
                                     lengths, length, source)
    def step(cache, offset):
      # Finished rows repeat their last position; their results are unused.
      positions = jnp.minimum(lengths + offset, length - 1)
      newest = jnp.take_along_axis(tokens, positions[:, None], axis=1)[:, 0]
      out, cache = decoding.decode_step(model, params, cache, newest,
                                        positions)
      return cache, out
    _, steps = jax.lax.scan(step, cache, jnp.arange(length - 1))
    return logits, steps  # steps: [offset, batch, vocab]

  logits, steps = map(np.asarray, run(tokens, source))
  got = np.zeros(tokens.shape + logits.shape[-1:], logits.dtype)
  for row, prompt_len in enumerate(lengths.tolist()):
    got[row, :prompt_len] = logits[row, :prompt_len]
    got[row, prompt_len:] = steps[:length - prompt_len, row]
  return got


@pytest.mark.parametrize('family, attention_kind, levers', [
    *((family, kind, ()) for family, kind in KINDS),
    *(('simmim', 'softmax', levers) for levers in LEVERS)], ids=str)
def test_cached_decoding_equals_the_parallel_pass(family, attention_kind,
                                                  levers):
  model, params, forward = _lm(family, attention_kind, levers)
  tokens = _tokens(23)  # ends inside a segment
  # Ragged prompts: one ends on a segment boundary, one is a single token;
  # the first holds some of its segment's last k tokens (pending states).
  lengths = jnp.asarray([7, 8, 1])
  np.testing.assert_allclose(_stepwise_logits(model, params, tokens, lengths),
                             forward(tokens), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize('family, attention_kind', KINDS[:3])
def test_greedy_generate_picks_the_arg_max_of_the_parallel_pass(
    family, attention_kind):
  model, params, forward = _lm(family, attention_kind)
  prompt = _tokens(7, seed=1)
  lengths = np.asarray([7, 4, 2])
  out = decoding.generate(model, params, prompt, max_new_tokens=16,
                          prompt_lengths=lengths)
  assert out.shape == (3, 23) and out.dtype == jnp.int32
  for row, length in enumerate(lengths):
    np.testing.assert_array_equal(out[row, :length], prompt[row, :length])
  logits = np.asarray(forward(out))
  for row, length in enumerate(lengths):
    previous = logits[row, length - 1:-1]  # predicts positions length..22
    chosen = np.take_along_axis(
        previous, np.asarray(out[row, length:])[:, None], axis=1)[:, 0]
    assert np.all(chosen >= previous.max(axis=1) - 1e-4), (row, chosen)


def test_cache_size_is_segment_plus_states_not_context():
  def shapes(family, max_len, attention_kind='softmax', **levers):
    model = simmim_jax.CausalLM(ModelConfig(
        vocab_size=VOCAB, head='lm', family=family, num_templates=3,
        attention_kind=attention_kind, d_model=16, num_heads=2, num_layers=2,
        max_len=256, segment_len=4, **levers))
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 8), jnp.int32))['params']
    cache = jax.eval_shape(functools.partial(decoding.init_cache, model,
                                             params, 2, max_len))
    return {name: jax.tree.map(lambda s: s.shape, part)
            for name, part in cache.items()}

  layers, batch, heads, head_dim, dim = 2, 2, 2, 8, 16
  short, long = shapes('simmim', 64), shapes('simmim', 256)
  for cache in (short, long):  # the current segment only: 4 slots
    assert cache['attention'] == {
        'keys': (layers, batch, 4, heads, head_dim),
        'values': (layers, batch, 4, heads, head_dim)}
  # One state slot per segment, one vector each.
  assert short['state_merge'] == {'state_keys': (layers, batch, 16, dim),
                                  'state_values': (layers, batch, 16, dim),
                                  'merge': (layers, batch, dim)}
  assert long['state_merge']['state_keys'] == (layers, batch, 64, dim)
  # k states per segment: k slots each, and the current segment's pending.
  assert shapes('simmim', 64, states_per_segment=3)['state_merge'] == {
      'state_keys': (layers, batch, 48, dim),
      'state_values': (layers, batch, 48, dim),
      'pending': (layers, batch, 3, dim), 'merge': (layers, batch, dim)}
  # Tokens attending over the states: each state's key and value per head.
  assert shapes('simmim', 64, state_readout='attend')['state_merge'] == {
      'state_keys': (layers, batch, 16, dim),
      'state_values': (layers, batch, 16, dim),
      'readout_keys': (layers, batch, 16, heads, head_dim),
      'readout_values': (layers, batch, 16, heads, head_dim)}
  assert shapes('local', 256) == {'attention': short['attention']}
  assert shapes('transformer', 256)['attention']['keys'] == (
      layers, batch, 256, heads, head_dim)
  templates = shapes('transformer', 256, 'templates')['attention']
  assert templates == {'template_max': (layers, batch, heads, 3),
                       'template_total': (layers, batch, heads, 3),
                       'template_weighted': (layers, batch, heads, 3,
                                             head_dim)}


def test_sampling_is_reproducible_and_stays_in_the_top_k():
  model, params, forward = _lm('simmim', 'softmax')
  prompt = _tokens(3)
  sample = functools.partial(decoding.generate, model, params, prompt,
                             max_new_tokens=20, temperature=2.0, top_k=3)
  first = sample(rng=jax.random.key(1))
  np.testing.assert_array_equal(first, sample(rng=jax.random.key(1)))
  assert not np.array_equal(first, sample(rng=jax.random.key(2)))
  logits = np.asarray(forward(first))[:, 2:-1]
  top = np.argsort(logits, axis=-1)[..., -3:]
  assert np.all(np.any(top == np.asarray(first)[:, 3:, None], axis=-1))


def test_sample_logits_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  draw = lambda **kw: np.asarray(decoding.sample_logits(
      logits, jax.random.key(0), temperature=1.0, **kw))
  assert set(draw(top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert set(draw(top_p=0.5).tolist()) == {0}
  assert set(draw(top_k=3).tolist()) == {0, 1, 2}
  assert set(draw().tolist()) == {0, 1, 2, 3}
  np.testing.assert_array_equal(decoding.sample_logits(logits, None), 0)


def test_a_row_emits_only_eos_after_eos():
  model, params, _ = _lm('local', 'softmax')
  prompt = _tokens(4, seed=2)
  greedy = np.asarray(decoding.generate(model, params, prompt,
                                        max_new_tokens=12))
  eos = int(greedy[0, 6])  # row 0 emits it by position 6
  out = np.asarray(decoding.generate(model, params, prompt, max_new_tokens=12,
                                     eos_id=eos))
  for row in range(3):
    emitted = np.flatnonzero(greedy[row, 4:] == eos)
    stop = 4 + emitted[0] if emitted.size else 16
    np.testing.assert_array_equal(out[row, :stop + 1], greedy[row, :stop + 1])
    assert np.all(out[row, stop:] == eos) or not emitted.size


@pytest.mark.parametrize('change, message', [
    (dict(prompt=jnp.zeros((2, 33), jnp.int32)), 'longer than .*max_len 32'),
    (dict(max_new_tokens=30), r'10 \+ 30 exceeds .*max_len 32'),
    (dict(prompt=jnp.full((2, 10), VOCAB)), r'id 13, outside \[0, vocab'),
    (dict(prompt=jnp.zeros((2, 10))), 'integer'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(top_p=0.0), 'top_p'),
    (dict(top_p=1.5), 'top_p'),
    (dict(top_k=0), 'top_k'),
    (dict(prompt_lengths=[0, 3]), 'prompt_lengths'),
    (dict(prompt_lengths=[3]), 'prompt_lengths'),
    (dict(eos_id=VOCAB), 'eos_id'),
    (dict(temperature=1.0), 'rng'),
])
def test_bad_generate_input_is_a_clear_error(change, message):
  model, params, _ = _lm('simmim', 'softmax')
  kwargs = dict(prompt=jnp.zeros((2, 10), jnp.int32), max_new_tokens=4)
  kwargs.update(change)
  with pytest.raises(ValueError, match=message):
    decoding.generate(model, params, **kwargs)


def test_a_model_without_a_language_head_is_refused():
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, num_heads=2, max_len=32,
                    segment_len=4)
  with pytest.raises(ValueError, match='CausalLM .* or a Seq2Seq'):
    decoding.generate(simmim_jax.Classifier(cfg), {},
                      jnp.zeros((1, 4), jnp.int32), max_new_tokens=2)


# Seq2Seq: (encoder family, decoder family, attention kind, cross_attention).
SEQ2SEQ = [('simmim', 'simmim', 'softmax', 'full'),
           ('transformer', 'local', 'softmax', 'segment_states'),
           ('local', 'transformer', 'templates', 'full')]


@functools.lru_cache(maxsize=None)
def _seq2seq(encoder, decoder, attention_kind, cross_attention):
  cfg = ModelConfig(vocab_size=VOCAB, head='seq2seq', family=encoder,
                    decoder_family=decoder, attention_kind=attention_kind,
                    cross_attention=cross_attention, num_templates=3,
                    d_model=16, num_heads=2, num_layers=1, decoder_layers=2,
                    mlp_dim=32, max_len=24, target_len=15, segment_len=4)
  model = simmim_jax.Seq2Seq(cfg)
  params = random_params(model, jnp.zeros((1, 24), jnp.int32),
                         jnp.zeros((1, 15), jnp.int32))['params']
  forward = jax.jit(lambda source, mask, targets: model.apply(
      {'params': params}, source, targets, mask))
  return model, params, forward


def _source():
  """[3, 24] source tokens with ragged masks (24, 10 and 3 real tokens)."""
  mask = np.arange(24)[None, :] < np.asarray([24, 10, 3])[:, None]
  return _tokens(24, seed=3) * mask, jnp.asarray(mask)


@pytest.mark.parametrize('case', SEQ2SEQ)
def test_seq2seq_cached_decoding_equals_the_parallel_pass(case):
  model, params, forward = _seq2seq(*case)
  source, mask = _source()
  targets = _tokens(15, seed=4)
  want = np.asarray(forward(source, mask, targets))
  lengths = jnp.asarray([1, 4, 8])
  got = _stepwise_logits(model, params, targets, lengths, (source, mask))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
  # init_cache runs the encoder: a loop can start at position 0.
  cache = decoding.init_cache(model, params, 3, 15, source=source,
                              source_mask=mask)
  first, _ = decoding.decode_step(model, params, cache, targets[:, 0],
                                  jnp.zeros(3, jnp.int32))
  np.testing.assert_allclose(first, want[:, 0], rtol=1e-5, atol=2e-6)
  # The decoder reads the source: another source, other logits.
  other = np.asarray(forward(source[::-1], mask[::-1], targets))
  assert np.abs(other - want).max() > 1e-3


def test_seq2seq_greedy_generate_and_its_cache():
  model, params, forward = _seq2seq(*SEQ2SEQ[1])
  source, mask = _source()
  prompt = jnp.ones((3, 1), jnp.int32)
  out = decoding.generate(model, params, prompt, max_new_tokens=14,
                          source=source, source_mask=mask)
  assert out.shape == (3, 15)
  logits = np.asarray(forward(source, mask, out))[:, :-1]
  chosen = np.take_along_axis(logits, np.asarray(out[:, 1:])[..., None],
                              axis=2)[..., 0]
  assert np.all(chosen >= logits.max(axis=2) - 1e-4)
  # segment_states: cross keys and values of the 6 segment states only.
  cache = jax.eval_shape(lambda s: decoding.init_cache(
      model, params, 3, 15, source=s), source)
  assert cache['cross_attention']['keys'].shape == (2, 3, 6, 2, 8)


@pytest.mark.parametrize('change, message', [
    (dict(source=None), 'needs source'),
    (dict(source=jnp.zeros((2, 24), jnp.int32)), 'source has 2 rows'),
    (dict(source=jnp.zeros((3, 25), jnp.int32)), 'longer than .*max_len 24'),
    (dict(source=jnp.full((3, 24), VOCAB)), 'source'),
    (dict(source_mask=jnp.ones((3, 5), bool)), 'source_mask'),
    (dict(max_new_tokens=15), r'1 \+ 15 exceeds .*max_len 15'),
])
def test_bad_seq2seq_generate_input_is_a_clear_error(change, message):
  model, params, _ = _seq2seq(*SEQ2SEQ[0])
  kwargs = dict(prompt=jnp.ones((3, 1), jnp.int32), max_new_tokens=4,
                source=jnp.ones((3, 24), jnp.int32))
  kwargs.update(change)
  with pytest.raises(ValueError, match=message):
    decoding.generate(model, params, **kwargs)


def test_a_causal_lm_takes_no_source():
  model, params, _ = _lm('local', 'softmax')
  with pytest.raises(ValueError, match='takes no source'):
    decoding.generate(model, params, jnp.ones((1, 2), jnp.int32),
                      max_new_tokens=2, source=jnp.ones((1, 4), jnp.int32))
