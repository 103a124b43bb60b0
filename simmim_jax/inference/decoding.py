"""Generation from a `CausalLM` or `Seq2Seq`: prefill, cached steps, sampling.

  cache = init_cache(model, params, batch_size, max_len)
  logits, cache = decode_step(model, params, cache, tokens, positions)
  tokens = generate(model, params, prompt, max_new_tokens=...)

`continue_text` serves experiments/generate.py, which loads the run with
simmim_jax.training.run_dir.load_run.

A `Seq2Seq` model takes `source=` (and `source_mask=`) in `init_cache` and
`generate`: its encoder runs once and every decoder layer's cache also holds
the keys and values of the encoder outputs its cross-attention reads.

The cache is a pytree of arrays, one entry per layer on axis 0, holding what
each family needs (layers.SMIBlock): the current segment's keys and values
for 'simmim' and 'local' (plus, for 'simmim', one state per finished segment
and the current segment's merge), every position's keys and values for
'transformer', and each template's running softmax for
attention_kind='templates'. `generate` runs the parallel forward pass once
over the prompt (prefill), then one jitted `lax.while_loop` of decoding
steps: one compile per shape and sampling setting.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax import checks
from simmim_jax.models import models
from simmim_jax.ops import decode_attention


def _check_model(model, source=None, source_mask=None):
  """(the config of the network that decodes, the checked source or None)."""
  if isinstance(model, models.CausalLM):
    if source is not None or source_mask is not None:
      raise ValueError('a CausalLM takes no source (that is for Seq2Seq)')
    return model.config, None
  if isinstance(model, models.Seq2Seq):
    if source is None:
      raise ValueError('a Seq2Seq model needs source= [batch, source_len] '
                       'token ids to generate from')
    cfg = model.config
    source = _check_tokens(source, cfg.vocab_size, 'source',
                           '[batch, source_len]')
    if source.shape[1] > cfg.max_len:
      raise ValueError(f'the source ({source.shape[1]} tokens) is longer than '
                       f'the model\'s max_len {cfg.max_len}')
    checks.mask(source_mask, source.shape, 'source_mask')
    if source_mask is None:
      source_mask = jnp.ones(source.shape, bool)
    return cfg.decoder_config, (source, jnp.asarray(source_mask, bool))
  raise ValueError(
      f'generation needs a CausalLM (head="lm") or a Seq2Seq (head='
      f'"seq2seq"), got {type(model).__name__} '
      f'(head={getattr(getattr(model, "config", None), "head", None)!r})')


def _check_batch(source, batch) -> None:
  if source is not None and source[0].shape[0] != batch:
    raise ValueError(f'source has {source[0].shape[0]} rows but the batch '
                     f'has {batch}')


def _check_max_len(config, max_len) -> int:
  max_len = checks.integer(max_len, 'max_len')
  if max_len > config.max_len:
    raise ValueError(f'a cache of {max_len} positions exceeds the model\'s '
                     f'max_len {config.max_len}')
  return max_len


def _prefill_outputs(model, params, prompt, prompt_lengths, source=None):
  """(logits [batch, prompt_len, vocab], the cache of the prompt alone)."""
  if source is None:
    return model.apply({'params': params}, prompt, positions=prompt_lengths)
  tokens, mask = source
  return model.apply({'params': params}, tokens, prompt, mask,
                     positions=prompt_lengths)


def _empty_cache(model, params, batch_size, max_len, source):
  # The prefill of a full-length prompt has the cache's shapes.
  shapes = jax.eval_shape(
      functools.partial(_prefill_outputs, model), params,
      jax.ShapeDtypeStruct((batch_size, max_len), jnp.int32),
      jax.ShapeDtypeStruct((batch_size,), jnp.int32), source)[1]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def init_cache(model, params, batch_size: int, max_len: int, *,
               source=None, source_mask=None) -> Any:
  """An empty cache for `batch_size` rows of up to `max_len` positions.

  A Seq2Seq model needs `source` [batch_size, source_len] (and optionally
  `source_mask`): its encoder runs here, and the cache holds what each
  decoder layer's cross-attention reads of it.
  """
  config, source = _check_model(model, source, source_mask)
  batch_size = checks.integer(batch_size, 'batch_size')
  _check_batch(source, batch_size)
  max_len = _check_max_len(config, max_len)
  return _init_cache(model, params, batch_size, max_len, source)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_cache(model, params, batch_size, max_len, source):
  cache = _empty_cache(model, params, batch_size, max_len, source)
  if source is not None:
    # A one-token prefill runs the encoder and the cross projections.
    one = jnp.ones((batch_size,), jnp.int32)
    cache['cross_attention'] = _prefill_outputs(
        model, params, one[:, None], one, source)[1]['cross_attention']
  return cache


def prefill(model, params, prompt: jax.Array, prompt_lengths: jax.Array,
            max_len: int, source=None):
  """The parallel pass over the prompt, its cache placed in an empty one.

  Args: prompt [batch, prompt_len] int32; prompt_lengths [batch] int32 in
    [1, prompt_len] (a row's tokens from its length on are not read); max_len
    the cache's positions; source: Seq2Seq only, (tokens, mask) checked by
    `_check_model`.

  Returns: (logits [batch, prompt_len, vocab] float32, cache).
  """
  logits, prompt_cache = _prefill_outputs(model, params, prompt,
                                          prompt_lengths, source)
  empty = _empty_cache(model, params, prompt.shape[0], max_len, source)
  # Every prompt leaf fits at the start of its empty leaf: fewer positions
  # (full attention) or fewer segment states, the rest the same shape.
  cache = jax.tree.map(
      lambda full, part: jax.lax.dynamic_update_slice(
          full, part.astype(full.dtype), (0,) * full.ndim),
      empty, prompt_cache)
  return logits, cache


def decode_step(model, params, cache: Any, tokens: jax.Array,
                positions: jax.Array):
  """One token per row through the cache.

  Args: cache from `init_cache` or `prefill`, holding each row's positions
    before `positions`; tokens [batch] int; positions [batch] int, where each
    row's token sits (rows may differ).

  Returns: (logits [batch, vocab] float32 for the next position, new cache).
  """
  checks.rank(tokens, 1, 'tokens', '[batch]')
  if np.shape(positions) != np.shape(tokens):
    raise ValueError(f'positions must have the shape of tokens '
                     f'{np.shape(tokens)} [batch], got {np.shape(positions)}')
  if not isinstance(model, models.Seq2Seq):
    _check_model(model)
  return _decode_step(model, params, cache, tokens, positions)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(model, params, cache, tokens, positions):
  if isinstance(model, models.Seq2Seq):  # the memory is in the cache
    logits, cache = model.apply({'params': params}, tokens[:, None],
                                positions=positions, cache=cache,
                                method=models.Seq2Seq.decode)
  else:
    logits, cache = model.apply({'params': params}, tokens[:, None],
                                positions=positions, cache=cache)
  return logits[:, 0], cache


def sample_logits(logits: jax.Array, rng: Optional[jax.Array], *,
                  temperature: float = 0.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> jax.Array:
  """logits [batch, vocab] -> int32 [batch] tokens.

  temperature 0 is greedy (arg-max); otherwise a draw from
  softmax(logits / temperature) restricted to the top_k most likely tokens
  and to the smallest set whose probability reaches top_p.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if rng is None:
    raise ValueError('sampling (temperature > 0) needs an rng key')
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep a token while the mass before it is below top_p (the first
    # always), i.e. every logit >= the last kept one.
    kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1,
                        keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(model, params, prompt, *, max_new_tokens: int,
             prompt_lengths=None, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             eos_id: Optional[int] = None,
             rng: Optional[jax.Array] = None, source=None,
             source_mask=None) -> jax.Array:
  """Continues each prompt row to prompt_len + max_new_tokens tokens.

  Args:
    model: a `CausalLM` or `Seq2Seq`; params: its 'params'.
    prompt: [batch, prompt_len] int token ids (Seq2Seq: the decoder's, e.g.
      the start token).
    max_new_tokens: positive int; prompt_len + max_new_tokens <= max_len
      (Seq2Seq: the decoder's target_len).
    prompt_lengths: optional [batch] ints in [1, prompt_len]: row b's prompt
      is prompt[b, :prompt_lengths[b]] and every later position is generated
      (default: all of prompt_len).
    temperature: 0 for greedy decoding, > 0 to sample.
    top_k, top_p: optional sampling filters (top_p in (0, 1]).
    eos_id: optional; after a row emits it, the row emits only eos_id.
    rng: a PRNG key, needed to sample; the same key gives the same sample.
    source, source_mask: Seq2Seq only: [batch, source_len] token ids of
      what to translate, summarise, ..., and optionally its mask.

  Returns: int32 [batch, prompt_len + max_new_tokens].
  """
  config, source = _check_model(model, source, source_mask)
  prompt = _check_tokens(prompt, config.vocab_size)
  batch, prompt_len = prompt.shape
  _check_batch(source, batch)
  max_new_tokens = checks.integer(max_new_tokens, 'max_new_tokens')
  if prompt_len > config.max_len:
    raise ValueError(f'the prompt ({prompt_len} tokens) is longer than the '
                     f'model\'s max_len {config.max_len}')
  if prompt_len + max_new_tokens > config.max_len:
    raise ValueError(
        f'prompt_len + max_new_tokens = {prompt_len} + {max_new_tokens} '
        f'exceeds the model\'s max_len {config.max_len}')
  lengths = _check_lengths(prompt_lengths, batch, prompt_len)
  temperature = checks.number(float(temperature), 'temperature')
  if top_k is not None:
    top_k = checks.integer(top_k, 'top_k')
    if top_k > config.vocab_size:
      raise ValueError(f'top_k ({top_k}) exceeds vocab_size '
                       f'{config.vocab_size}')
  if top_p is not None:
    checks.number(top_p, 'top_p', high=1, low_open=True, high_open=False)
  if eos_id is not None and not 0 <= eos_id < config.vocab_size:
    raise ValueError(f'eos_id {eos_id} is outside [0, vocab_size='
                     f'{config.vocab_size})')
  if temperature > 0 and rng is None:
    raise ValueError('sampling (temperature > 0) needs an rng key')
  if rng is None:
    rng = jax.random.key(0)  # unused: greedy
  return _generate(model, params, prompt, lengths, rng, source,
                   max_new_tokens=max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=None if top_p is None else float(top_p),
                   eos_id=eos_id)


def _check_tokens(tokens, vocab_size, name='prompt',
                  layout='[batch, prompt_len]') -> jax.Array:
  checks.rank(tokens, 2, name, layout)
  if not np.issubdtype(np.dtype(tokens.dtype), np.integer):
    raise ValueError(f'{name} must hold integer token ids, got dtype '
                     f'{tokens.dtype}')
  checks.token_ids(tokens, vocab_size, name)
  return jnp.asarray(tokens, jnp.int32)


def _check_lengths(prompt_lengths, batch, prompt_len) -> jax.Array:
  if prompt_lengths is None:
    return jnp.full((batch,), prompt_len, jnp.int32)
  lengths = np.asarray(prompt_lengths)
  if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype,
                                                    np.integer):
    raise ValueError(f'prompt_lengths must be [batch] = ({batch},) ints, got '
                     f'shape {lengths.shape} dtype {lengths.dtype}')
  if lengths.min() < 1 or lengths.max() > prompt_len:
    raise ValueError(f'prompt_lengths must be in [1, prompt_len={prompt_len}]'
                     f', got {lengths.tolist()}')
  return jnp.asarray(lengths, jnp.int32)


@functools.partial(jax.jit, static_argnames=(
    'model', 'max_new_tokens', 'temperature', 'top_k', 'top_p', 'eos_id'))
def _generate(model, params, prompt, lengths, rng, source, *, max_new_tokens,
              temperature, top_k, top_p, eos_id):
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  sample = lambda logits, step: sample_logits(
      logits, jax.random.fold_in(rng, step), temperature=temperature,
      top_k=top_k, top_p=top_p)
  logits, cache = prefill(model, params, prompt, lengths, total, source)
  first = sample(jnp.take_along_axis(logits, (lengths - 1)[:, None, None],
                                     axis=1)[:, 0], 0)
  tokens = jnp.pad(prompt, ((0, 0), (0, max_new_tokens)))
  tokens = decode_attention.write_slot(tokens, first, lengths)
  done = (jnp.zeros((batch,), bool) if eos_id is None else first == eos_id)

  # positions: where each row's newest token sits; a row is finished when
  # that is the last position, or when it emitted eos_id.
  def active(positions, done):
    return (positions < total - 1) & ~done

  def cond(state):
    _, _, positions, _, done = state
    return jnp.any(active(positions, done))

  def body(state):
    step, tokens, positions, cache, done = state
    newest = jnp.take_along_axis(tokens, positions[:, None], axis=1)[:, 0]
    logits, cache = decode_step(model, params, cache, newest, positions)
    following = sample(logits, step)
    writing = active(positions, done)
    tokens = decode_attention.write_slot(tokens, following, positions + 1,
                                         writing)
    if eos_id is not None:
      done = done | (writing & (following == eos_id))
    positions = jnp.where(writing, positions + 1, positions)
    return step + 1, tokens, positions, cache, done

  _, tokens, _, _, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(1), tokens, lengths, cache, done))
  if eos_id is not None:  # rows that stopped early: eos_id to the end
    index = jnp.arange(total)[None, :]
    emitted = (index >= lengths[:, None]) & (tokens == eos_id)
    first_eos = jnp.where(jnp.any(emitted, axis=1),
                          jnp.argmax(emitted, axis=1), total)
    tokens = jnp.where(index > first_eos[:, None], eos_id, tokens)
  return tokens


def continue_text(model, params, prompt: str, **sampling) -> str:
  """The prompt's utf-8 bytes continued; ids are byte + 1 (0 pads)."""
  ids = np.frombuffer(prompt.encode('utf-8'), np.uint8).astype(np.int32) + 1
  if not ids.size:
    raise ValueError('the prompt must hold at least one byte')
  out = generate(model, params, ids[None], **sampling)
  data = bytes(int(i) - 1 for i in np.asarray(out[0]) if i > 0)
  return data.decode('utf-8', errors='replace')
