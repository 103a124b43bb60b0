"""Models: encoder stack and the three task heads.

  Encoder               tokens -> token outputs [batch, length, embed]
  Classifier            tokens -> logits [batch, num_classes]
  DualEncoderClassifier (tokens, other_tokens) -> logits  (LRA Retrieval style)
  CausalLM              tokens -> next-token logits [batch, length, vocab]
  Seq2Seq               (source, targets) -> next-target-token logits
  MaskedModel           tokens -> logits [batch, length, vocab] (pretraining)

`build_model(config)` picks the head named by `config.head`.
"""

import math
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from simmim_jax import checks
from simmim_jax.models import layers
from simmim_jax.models import projections
from simmim_jax.models import template_layer
from simmim_jax.models.model_config import ModelConfig


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """[length, dim] fixed sin/cos position codes (Vaswani et al. 2017)."""
  position = np.arange(length)[:, None]
  frequency = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)
  codes = np.zeros((length, dim), np.float32)
  codes[:, 0::2] = np.sin(position * frequency)
  codes[:, 1::2] = np.cos(position * frequency)
  return codes


class Encoder(nn.Module):
  """Token + position embeddings, scanned blocks, final LayerNorm.

  tokens: [batch, length] int; mask: [batch, length] bool (True = real).
  Returns [batch, length, embed].

  Decoding (causal encoders; see `layers.SMIBlock` and decoding.py): with
  `positions` [batch] int it returns (outputs, cache), the cache stacked over
  layers on axis 0. Without `cache`, tokens are each row's prompt and
  `positions` their lengths (prefill); with it, tokens [batch, 1] are each
  row's token at `positions` (one step).

  A decoder (`cross`, see `Seq2Seq`) also takes `memory`: (encoder outputs
  [batch, memory_len, embed], their mask) in the parallel pass and prefill;
  its steps read the memory's keys and values from the cache.
  """
  config: ModelConfig
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: bool = True,
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None,
               memory: Optional[tuple] = None):
    cfg = self.config
    stepping = cache is not None
    if self.cross and memory is None and not stepping:
      raise ValueError('a decoder needs the encoder outputs (memory)')
    checks.rank(tokens, 2, 'tokens', '[batch, length]')
    batch, length = tokens.shape
    if length > cfg.max_len:
      raise ValueError(f'input length {length} exceeds max_len {cfg.max_len}')
    checks.token_ids(tokens, cfg.vocab_size)
    checks.mask(mask, (batch, length))

    x = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ('vocab', 'embed')),
        name='token_embedding')(tokens)
    if cfg.positions == 'learned':
      table = self.param(
          'position_embedding',
          nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                       ('position', 'embed')),
          (cfg.max_len, cfg.d_model), cfg.storage_dtype)
    else:
      table = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model))
    # A step's token sits at its row's position; otherwise at 0..length-1.
    x = x + (table[positions][:, None] if stepping
             else table[:length]).astype(x.dtype)
    # A zero-valued hook whose gradient is the gradient w.r.t. the input
    # embeddings (causality and attribution checks). Left out of init so
    # parameters do not depend on the input length; create it with
    # apply(..., mutable='perturbations').
    if not self.is_initializing():
      x = self.perturb('embeddings', x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    block = layers.SMIBlock
    if cfg.remat != 'none' and positions is None:  # only backprop needs it
      block = nn.remat(block, prevent_cse=False, policy=(
          jax.checkpoint_policies.dots_with_no_batch_dims_saveable
          if cfg.remat == 'projections' else None))
    per_layer = ('params', 'intermediates', 'losses', template_layer.STATS,
                 template_layer.PARAM_UPDATES,
                 template_layer.TEMPLATE_MEMORY)
    # The cache is scanned over (axis 0: one per layer); the rest is shared.
    in_axes = (nn.broadcast, nn.broadcast, 0 if stepping else nn.broadcast,
               nn.broadcast)
    stack = nn.scan(
        block, variable_axes={name: 0 for name in per_layer},
        split_rngs={'params': True, 'dropout': True, 'templates': True},
        in_axes=in_axes,
        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    blocks = stack(cfg, self.causal, deterministic, self.cross, name='blocks')
    x, cache = blocks(x, mask, positions, cache, memory)
    x = projections.layer_norm(cfg, 'final_norm')(x)
    return x if positions is None else (x, cache)


class _PooledEncoder(nn.Module):
  """Encoder + global pooling + logits MLP, shared by the two classifiers."""
  config: ModelConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.pool = layers.GlobalPool(self.config)
    self.head = projections.Mlp(self.config,
                                out_dim=self.config.num_classes,
                                out_axis='classes')

  def encode(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
             deterministic: bool = True) -> jax.Array:
    """The global representation: [batch, embed]."""
    outputs = self.encoder(tokens, mask, deterministic=deterministic)
    return self.pool(outputs, mask)


class Classifier(_PooledEncoder):
  """Encoder -> global pooling -> MLP -> [batch, num_classes] logits."""

  def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> jax.Array:
    pooled = self.encode(tokens, mask, deterministic=deterministic)
    return self.head(pooled, deterministic=deterministic)


class DualEncoderClassifier(_PooledEncoder):
  """One shared encoder on both inputs; MLP over [a, b, a*b, a-b]."""

  def __call__(self, tokens: jax.Array, other_tokens: jax.Array,
               mask: Optional[jax.Array] = None,
               other_mask: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> jax.Array:
    a = self.encode(tokens, mask, deterministic=deterministic)
    b = self.encode(other_tokens, other_mask, deterministic=deterministic)
    features = jnp.concatenate([a, b, a * b, a - b], axis=-1)
    return self.head(features, deterministic=deterministic)


class CausalLM(nn.Module):
  """Causal encoder -> [batch, length, vocab] float32 next-token logits.

  Output t depends on tokens <= t only, for every family. With `positions`
  (and `cache`) it returns (logits, cache): the prefill and decoding steps of
  `Encoder`, which decoding.py builds generation from.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: bool = True,
               positions: Optional[jax.Array] = None,
               cache: Optional[dict] = None):
    cfg = self.config
    x = Encoder(cfg, causal=True, name='encoder')(
        tokens, mask, deterministic=deterministic, positions=positions,
        cache=cache)
    if positions is not None:
      x, cache = x
    logits = _lm_head(cfg)(x)
    if positions is not None:
      return logits.astype(jnp.float32), cache
    return logits.astype(jnp.float32)


class MaskedModel(nn.Module):
  """Encoder -> [batch, length, vocab] float32 logits at every position:
  masked-token prediction (config.objective='masked'; masking.py).

  With `tied_output` the output projection is the token embedding's
  transpose, scaled by 1/sqrt(d_model), plus a bias, otherwise its own
  dense layer. Its encoder's parameters are what a fine-tuning run
  (`init_from`) loads.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    encoder = Encoder(cfg, name='encoder')
    x = encoder(tokens, mask, deterministic=deterministic)
    if not cfg.tied_output:
      return _lm_head(cfg)(x).astype(jnp.float32)
    table = nn.unbox(encoder.variables['params']['token_embedding'][
        'embedding'])
    bias = self.param('output_bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('vocab',)), (cfg.vocab_size,),
                      cfg.storage_dtype)
    # Unit-variance embeddings against normalised outputs: unscaled, the
    # first logits have a std of about sqrt(d_model) (a loss near 15 on
    # ListOps), and the early steps go to undoing that.
    logits = jnp.einsum('ble,ve->blv', x, table.astype(x.dtype)) / jnp.sqrt(
        jnp.asarray(cfg.d_model, x.dtype))
    return (logits + bias.astype(x.dtype)).astype(jnp.float32)


def _lm_head(cfg: ModelConfig) -> nn.Dense:
  return nn.Dense(
      cfg.vocab_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
      kernel_init=projections.dense_init('embed', 'vocab'),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             ('vocab',)),
      name='lm_head')


class Seq2Seq(nn.Module):
  """Encoder (any family) -> causal decoder with cross-attention -> logits.

  source: [batch, source_len] int, source_mask its mask; targets: [batch,
  target_len] int, the decoder's inputs (a start token, then the target),
  target_mask its mask. Returns [batch, target_len, vocab] float32 logits,
  output t predicting targets[:, t + 1]; it depends on targets <= t only.

  The decoder is `config.decoder_config` (its family, layers and length) and
  reads every encoder output, or with cross_attention='segment_states' only
  each segment's first output (the encoder's segment states): O(target_len x
  m) instead of O(target_len x source_len).

  Generation (decoding.py): with `positions` the call is the prefill and
  returns (logits, cache), the memory's keys and values in the cache;
  `decode` with a cache is one step and never reads the source again.
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.decoder = Encoder(cfg.decoder_config, causal=True, cross=True)
    self.lm_head = _lm_head(cfg)

  def encode(self, source: jax.Array, source_mask: Optional[jax.Array] = None,
             *, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """The memory: (outputs [batch, memory_len, embed], mask [batch,
    memory_len]), memory_len = source_len or its number of segments."""
    outputs = self.encoder(source, source_mask, deterministic=deterministic)
    if source_mask is None:
      source_mask = jnp.ones(source.shape, bool)
    source_mask = source_mask.astype(bool)
    if self.config.cross_attention == 'segment_states':
      # A segment is real when its first token is (padding is at the end).
      step = self.config.segment_len
      return outputs[:, ::step], source_mask[:, ::step]
    return outputs, source_mask

  def decode(self, targets: jax.Array, memory: Optional[tuple] = None,
             target_mask: Optional[jax.Array] = None, *,
             deterministic: bool = True,
             positions: Optional[jax.Array] = None,
             cache: Optional[dict] = None):
    """Decoder logits; (logits, cache) with `positions` (see CausalLM)."""
    x = self.decoder(targets, target_mask, deterministic=deterministic,
                     positions=positions, cache=cache, memory=memory)
    if positions is not None:
      x, cache = x
      return self.lm_head(x).astype(jnp.float32), cache
    return self.lm_head(x).astype(jnp.float32)

  def __call__(self, source: jax.Array, targets: jax.Array,
               source_mask: Optional[jax.Array] = None,
               target_mask: Optional[jax.Array] = None, *,
               deterministic: bool = True,
               positions: Optional[jax.Array] = None):
    memory = self.encode(source, source_mask, deterministic=deterministic)
    return self.decode(targets, memory, target_mask,
                       deterministic=deterministic, positions=positions)


def build_model(config: ModelConfig) -> nn.Module:
  """The model for `config.head`."""
  return {'classifier': Classifier, 'dual_encoder': DualEncoderClassifier,
          'lm': CausalLM, 'seq2seq': Seq2Seq,
          'masked': MaskedModel}[config.head](config)
