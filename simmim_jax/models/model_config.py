"""The model configuration: one frozen dataclass, validated on construction.

An experiment config's `model` sub-dict is exactly these keyword arguments:
`ModelConfig(**config.model)`. Every ablation switch is a plain field.
"""

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from simmim_jax import checks
from simmim_jax.checks import ConfigError
from simmim_jax.ops import attention_kernels
from simmim_jax.ops import hierarchy

FAMILIES = ('simmim', 'local', 'transformer')
HEADS = ('classifier', 'dual_encoder', 'lm', 'seq2seq', 'masked')
CROSS_ATTENTIONS = ('full', 'segment_states')
STATE_READOUTS = ('merge', 'attend')
POOLINGS = ('hierarchical', 'mean')
POSITIONS = ('learned', 'sinusoidal')
ATTENTION_KINDS = ('softmax', 'templates')
TEMPLATE_UPDATES = ('vq', 'ema')
# What a block keeps for backprop: everything ('none'), only its input
# ('full'), or the outputs of its dense projections (q, k, v, out and the
# MLP's: the matmuls without batch dimensions), recomputing attention and the
# elementwise ops ('projections', maxtext's 'minimal').
REMAT_POLICIES = ('none', 'full', 'projections')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a SimMIM model or one of its baselines.

  Families share embeddings, heads and every other field; they differ only in
  the token mixing of each block:
    simmim:      segment attention + segment-state attention + merge.
    local:       segment attention only (simmim with segment_states=False).
    transformer: full attention over the whole sequence.
  """
  vocab_size: int                  # token ids are in [0, vocab_size)
  head: str = 'classifier'         # 'classifier' | 'dual_encoder' | 'lm'
                                   # | 'seq2seq' | 'masked'
  num_classes: int = 2             # classifier and dual-encoder outputs
  family: str = 'simmim'           # 'simmim' | 'local' | 'transformer'
  d_model: int = 128               # width of the residual stream
  num_heads: int = 4               # attention heads; divides d_model
  num_layers: int = 2              # blocks, scanned with nn.scan
  mlp_dim: int = 512               # hidden width of every MLP / FFN
  max_len: int = 2048              # longest input the model accepts
  segment_len: int = 128           # tokens per segment (also hierarchy leaves)
  segment_states: bool = True      # simmim: segment-state attention on/off
  exclude_self: bool = True        # state i ignores its own state (j != i)
  ffn_merge: bool = True           # merge FFN(s~_i); False merges s~_i itself
  state_key_dim: Optional[int] = None  # key_dim of W_Q, W_K; None = d_model
  states_per_segment: int = 1      # k states per segment (the first k
                                   # outputs; causal: the last k)
  state_readout: str = 'merge'     # how tokens receive the states: 'merge'
                                   # (FFN(s~) added to every position of a
                                   # segment) | 'attend' (each token attends
                                   # over the states it may read)
  pooling: str = 'hierarchical'    # 'hierarchical' | 'mean' global pooling
  aggregator: str = 'concat'       # 'concat' | 'weighted_sum' | 'attention'
  per_level_weights: bool = True   # separate aggregation weights per level
  num_levels: Optional[int] = None  # hierarchy levels; None = ceil(log2 m)
  positions: str = 'learned'       # 'learned' | 'sinusoidal'
  dropout_rate: float = 0.0        # on every residual branch
  dtype: str = 'float32'           # compute dtype; softmax stays float32
  param_dtype: str = 'float32'     # storage dtype of parameters
  remat: str = 'none'              # REMAT_POLICIES; True/False (older
                                   # runs' configs) read as 'full'/'none'
  attention_kind: str = 'softmax'  # token attention: 'softmax' | 'templates'
  # The kernel of token attention (ops/attention_kernels.py): None picks
  # per backend and dtype; 'loop' | 'xla' | 'cudnn' | 'splash' force one.
  attention_implementation: Optional[str] = None
  num_templates: int = 16          # templates per head ('templates')
  commitment_cost: float = 0.25    # VQ commitment weight ('templates')
  routing_temperature: float = 1.0  # soft routing for the template gradient
  template_update: str = 'ema'     # library learning: 'vq' (codebook loss
                                   # + task gradient) | 'ema' (EMA k-means)
  template_decay: float = 0.99     # EMA decay of template usage (and k-means)
  reseed_threshold: float = 1.0    # re-seed templates used by fewer queries
                                   # per step (EMA); 0 = never
  # head='seq2seq': the fields above describe the encoder; the causal
  # decoder shares them except for these.
  decoder_family: Optional[str] = None  # None = family
  decoder_layers: Optional[int] = None  # None = num_layers
  target_len: Optional[int] = None  # longest decoder input; None = max_len
  cross_attention: str = 'full'    # decoder reads 'full' encoder outputs |
                                   # only the encoder's 'segment_states'
  # head='masked': logits from the token embedding's transpose (or a dense)
  tied_output: bool = True

  def __post_init__(self):
    if isinstance(self.remat, bool):
      object.__setattr__(self, 'remat', 'full' if self.remat else 'none')
    for name in ('vocab_size', 'num_classes', 'd_model', 'num_heads',
                 'num_layers', 'mlp_dim', 'max_len', 'segment_len',
                 'num_templates', 'states_per_segment'):
      checks.integer(getattr(self, name), name)
    if self.state_key_dim is not None:
      checks.integer(self.state_key_dim, 'state_key_dim')
    for name in ('num_levels', 'decoder_layers', 'target_len'):
      if getattr(self, name) is not None:
        checks.integer(getattr(self, name), name)
    _one_of('family', self.family, FAMILIES)
    _one_of('head', self.head, HEADS)
    _one_of('pooling', self.pooling, POOLINGS)
    _one_of('positions', self.positions, POSITIONS)
    _one_of('dtype', self.dtype, tuple(DTYPES))
    _one_of('param_dtype', self.param_dtype, tuple(DTYPES))
    _one_of('attention_kind', self.attention_kind, ATTENTION_KINDS)
    _one_of('template_update', self.template_update, TEMPLATE_UPDATES)
    _one_of('cross_attention', self.cross_attention, CROSS_ATTENTIONS)
    _one_of('state_readout', self.state_readout, STATE_READOUTS)
    _one_of('remat', self.remat, REMAT_POLICIES)
    if self.attention_implementation is not None:
      _one_of('attention_implementation', self.attention_implementation,
              attention_kernels.IMPLEMENTATIONS)
    if self.states_per_segment > self.segment_len:
      raise ConfigError(
          f'states_per_segment ({self.states_per_segment}) exceeds '
          f'segment_len ({self.segment_len}): a segment has that many vectors')
    if self.decoder_family is not None:
      _one_of('decoder_family', self.decoder_family, FAMILIES)
    checks.number(self.template_decay, 'template_decay', high=1)
    checks.number(self.reseed_threshold, 'reseed_threshold')
    checks.number(self.commitment_cost, 'commitment_cost')
    checks.number(self.routing_temperature, 'routing_temperature',
                  low_open=True)
    hierarchy.get_aggregator(self.aggregator)
    if self.d_model % self.num_heads:
      raise ConfigError(f'd_model ({self.d_model}) must be divisible by '
                        f'num_heads ({self.num_heads})')
    if self.family != 'transformer' and self.segment_len > self.max_len:
      raise ConfigError(
          f'segment_len ({self.segment_len}) exceeds max_len ({self.max_len}):'
          ' every input would be one segment')
    if self.positions == 'sinusoidal' and self.d_model % 2:
      raise ConfigError(f'sinusoidal positions need an even d_model, got '
                        f'{self.d_model}')
    checks.number(self.dropout_rate, 'dropout_rate', high=1)
    for name in ('segment_states', 'exclude_self', 'ffn_merge',
                 'per_level_weights', 'tied_output'):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f'{name} must be True or False, got '
                          f'{getattr(self, name)!r}')
    if self.head == 'seq2seq':
      target_len = self.target_len or self.max_len
      if ((self.decoder_family or self.family) != 'transformer'
          and self.segment_len > target_len):
        raise ConfigError(
            f'segment_len ({self.segment_len}) exceeds target_len '
            f'({target_len}): every decoder input would be one segment')

  @property
  def decoder_config(self) -> 'ModelConfig':
    """The causal decoder of a 'seq2seq' model, as an LM's config."""
    return dataclasses.replace(
        self, head='lm', family=self.decoder_family or self.family,
        num_layers=self.decoder_layers or self.num_layers,
        max_len=self.target_len or self.max_len, decoder_family=None,
        decoder_layers=None, target_len=None)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> 'ModelConfig':
    """ModelConfig(**fields), with unknown field names named in a ValueError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ConfigError(f'unknown model config field(s) {unknown}; known '
                        f'fields: {sorted(known)}')
    return cls(**fields)

  @property
  def uses_segment_states(self) -> bool:
    return self.family == 'simmim' and self.segment_states

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def max_levels(self) -> int:
    """Hierarchy levels needed for the longest input."""
    max_segments = -(-self.max_len // self.segment_len)
    levels = hierarchy.num_tree_levels(max_segments)
    return levels if self.num_levels is None else min(levels, self.num_levels)


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f'{name} must be one of {list(choices)}, got {value!r}')
