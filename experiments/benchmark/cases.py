"""What the benchmark suite runs: ops, layers, train steps and decoding steps
at one length.

A `Case` is a builder of inputs and a function per mode (forward,
forward+backward, train step). The builders use jax ops only, so
`jax.eval_shape(functools.partial(mode_args, case))` gives the argument
shapes without allocating anything: the cost of a case too large to run can
still be read. Parameters do not depend on the input length; they are
initialised on one segment's worth of input, which keeps the (eager) init
ops the same, and compiled once, at every length. Everything is batch 1;
q, k, v are [1, length, heads, head_dim].
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from simmim_jax.inference import decoding
from simmim_jax.models import layers
from simmim_jax.models import models
from simmim_jax.models.model_config import DTYPES
from simmim_jax.models.model_config import FAMILIES
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.ops import attention
from simmim_jax.ops import segment_states
from simmim_jax.ops import templates
from simmim_jax.training import steps

FORWARD = 'forward'
BACKWARD = 'forward+backward'
TRAIN_STEP = 'train_step'
DECODE_STEP = 'decode_step'
# The kinds of case, in report order.
GROUPS = ('op', 'layer', 'train_step', 'decode')
# (family, attention_kind) of the decoding cases.
DECODE_KINDS = (('simmim', 'softmax'), ('local', 'softmax'),
                ('transformer', 'softmax'), ('simmim', 'templates'),
                ('transformer', 'templates'))
# The PyTorch peers and the JAX op computing the same attention (whose XLA
# FLOP count they are credited with).
TORCH_TWINS = {'torch_sdpa_segments': 'segment_attention',
               'torch_sdpa_full': 'full_attention'}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Shapes shared by every case; d_model = num_heads * head_dim."""
  num_heads: int = 8
  head_dim: int = 64
  segment_len: int = 128
  num_templates: int = 16
  mlp_dim: int = 2048
  num_layers: int = 2          # depth of the train-step models
  vocab_size: int = 256
  dtype: str = 'float32'       # inputs and compute; softmax stays float32
  remat: str = 'none'          # ModelConfig.remat: 'none' | 'full' |
                               # 'projections'

  @property
  def d_model(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def window(self) -> tuple[int, int]:
    """(left, right) keys of the sliding window: segment_len keys in all."""
    return self.segment_len // 2, self.segment_len // 2 - 1


@dataclasses.dataclass(frozen=True)
class Case:
  """One computation at one sequence length, run in each of its modes.

  group: 'op' | 'layer' | 'train_step'.
  inputs: builds the arguments every mode shares.
  modes: FORWARD / TRAIN_STEP fns take `*inputs()`; the BACKWARD fn takes
    `*inputs(), cotangent`, the cotangent shaped as the FORWARD output, and
    returns gradients of sum(out * cotangent) w.r.t. every input (parameters
    included).
  """
  group: str
  name: str
  length: int
  inputs: Callable[[], tuple[Any, ...]]
  modes: dict[str, Callable[..., Any]]
  # An argument each fn returns a new value of, as its output's second item
  # (a decoding cache): donated, and passed from one timed call to the next.
  carried: Optional[int] = None
  # Training FLOPs per call as maxtext counts them (train steps only).
  model_flops: Optional[float] = None


class Workload(NamedTuple):
  """forward(*inputs()) -> one array."""
  forward: Callable[..., jax.Array]
  inputs: Callable[[], tuple[Any, ...]]


def normal(seed: int, shape: tuple[int, ...], dtype,
           scale: float = 1.0) -> jax.Array:
  """Standard normal draws (times `scale`) of `shape`, cast to `dtype`."""
  draws = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  return (scale * draws).astype(dtype)


def init_like(init: Callable[..., Any], *args: Any) -> Any:
  """What `init(*args)` returns, with seeded normal draws (scale 0.02; zeros
  for integer leaves) in place of the initialisers' values. A benchmark
  times programs, whatever the parameters hold; drawn in NumPy from
  `jax.eval_shape`'s shapes, nothing is compiled (an eager flax init
  compiles each of its operations on its own)."""
  rng = np.random.default_rng(1)

  def draw(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return jnp.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree.map(draw, jax.eval_shape(init, *args))


def qkv(sizes: Sizes, length: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q, k, v: each [1, length, heads, head_dim]."""
  shape = (1, length, sizes.num_heads, sizes.head_dim)
  return tuple(normal(seed, shape, sizes.compute_dtype) for seed in range(3))


def _template_attention(q, k, v, library, segment_len):
  """Segment template attention, the assignment of queries included.

  q, k, v: [1, length, heads, head_dim]; library: [heads, num_templates,
  head_dim]. Returns [1, length, heads, head_dim].
  """
  assignments = templates.assign_templates(q, library)
  return templates.segment_template_attention(library, assignments, k, v,
                                              segment_len)


def _state_inputs(sizes: Sizes, length: int):
  """states [1, length / segment_len, d_model]; w_q, w_k, w_v [d_model,
  d_model] with variance 1 / d_model."""
  dim = sizes.d_model
  states = normal(0, (1, -(-length // sizes.segment_len), dim),
                  sizes.compute_dtype)
  weights = [normal(seed, (dim, dim), sizes.compute_dtype, dim ** -0.5)
             for seed in (1, 2, 3)]
  return (states, *weights)


def _mha_workload(sizes: Sizes, length: int) -> Workload:
  """Flax's attention layer, projections included: x [1, length, d_model]."""
  module = nn.MultiHeadDotProductAttention(
      num_heads=sizes.num_heads, qkv_features=sizes.d_model,
      dtype=sizes.compute_dtype)

  def inputs():
    x = normal(0, (1, length, sizes.d_model), sizes.compute_dtype)
    return init_like(module.init, jax.random.key(1),
                     x[:, :sizes.segment_len]), x
  return Workload(module.apply, inputs)


def op_workloads(sizes: Sizes, length: int) -> dict[str, Workload]:
  """The attention ops by name, each at `length`."""
  seg = sizes.segment_len
  heads_qkv = functools.partial(qkv, sizes, length)

  def template_inputs():
    library = normal(3, (sizes.num_heads, sizes.num_templates,
                         sizes.head_dim), sizes.compute_dtype)
    return (*heads_qkv(), library)

  return {
      'segment_attention': Workload(
          lambda q, k, v: attention.segment_attention(q, k, v, seg),
          heads_qkv),
      'segment_state_attention': Workload(
          segment_states.segment_state_attention,
          functools.partial(_state_inputs, sizes, length)),
      'segment_template_attention': Workload(
          functools.partial(_template_attention, segment_len=seg),
          template_inputs),
      'full_attention': Workload(attention.full_attention, heads_qkv),
      'dot_product_attention': Workload(
          lambda q, k, v: jax.nn.dot_product_attention(
              q, k, v, implementation='xla'),
          heads_qkv),
      'sliding_window_attention': Workload(
          lambda q, k, v: jax.nn.dot_product_attention(
              q, k, v, local_window_size=sizes.window, implementation='xla'),
          heads_qkv),
      'flax_mha': _mha_workload(sizes, length),
  }


def model_config(sizes: Sizes, family: str, length: int,
                 num_layers: int) -> ModelConfig:
  """The model config of `family` for inputs of exactly `length`."""
  return ModelConfig(
      vocab_size=sizes.vocab_size, family=family, d_model=sizes.d_model,
      num_heads=sizes.num_heads, num_layers=num_layers,
      mlp_dim=sizes.mlp_dim, max_len=length, segment_len=sizes.segment_len,
      dtype=sizes.dtype, remat=sizes.remat)


def _block_workload(config: ModelConfig, length: int) -> Workload:
  """One SMIBlock (no mask): x [1, length, d_model] -> same shape."""
  block = layers.SMIBlock(config)

  def inputs():
    x = normal(0, (1, length, config.d_model), config.compute_dtype)
    return init_like(block.init, jax.random.key(1), x[:, :config.segment_len],
                     None), x
  return Workload(lambda params, x: block.apply(params, x, None)[0], inputs)


def layer_workloads(sizes: Sizes, length: int) -> dict[str, Workload]:
  """SMIBlock of each family by name ('SMIBlock/simmim', ...)."""
  return {f'SMIBlock/{family}': _block_workload(
      model_config(sizes, family, length, num_layers=1), length)
          for family in FAMILIES}


def with_backward(forward: Callable[..., jax.Array]) -> Callable[..., Any]:
  """fn(*inputs, cotangent) -> sum(forward(*inputs) * cotangent) and its
  gradients w.r.t. every input (pytrees of parameters included).

  The value is returned, as a training loss is: with the gradients alone,
  XLA drops the forward's last product (its output only feeds the unused
  value), which PyTorch's autograd, running the forward first, cannot.
  """
  def forward_backward(*args):
    *inputs, cotangent = args

    def objective(*inputs):
      out = forward(*inputs).astype(jnp.float32)
      return jnp.sum(out * cotangent.astype(jnp.float32))
    return jax.value_and_grad(objective,
                              argnums=tuple(range(len(inputs))))(*inputs)
  return forward_backward


def mode_args(case: Case) -> dict[str, tuple[Any, ...]]:
  """The arguments of each mode's fn; the BACKWARD cotangent is a fixed
  normal draw. Built from jax ops only, so `jax.eval_shape` can trace it."""
  inputs = case.inputs()
  args = {mode: inputs for mode in case.modes}
  if BACKWARD in case.modes:
    out = jax.eval_shape(case.modes[FORWARD], *inputs)
    args[BACKWARD] = (*inputs, normal(7, out.shape, out.dtype))
  return args


def train_step_case(sizes: Sizes, family: str, length: int,
                    num_layers: int) -> Case:
  """The project's train step (`steps.make_train_step`, AdamW) of a
  Classifier on one [1, length] sequence.

  fn(state, batch, metrics, dropout_key) -> (state, metrics).
  """
  model = models.Classifier(model_config(sizes, family, length, num_layers))

  def inputs():
    tokens = jax.random.randint(jax.random.key(0), (1, length), 0,
                                sizes.vocab_size)
    variables = init_like(model.init, jax.random.key(1),
                          tokens[:, :sizes.segment_len])
    state = steps.TrainState.create(
        apply_fn=model.apply, params=nn.unbox(variables['params']),
        tx=optax.adamw(1e-3), model_state=steps.model_state(variables))
    batch = {'tokens': tokens, 'mask': jnp.ones((1, length), bool),
             'label': jnp.zeros((1,), jnp.int32), 'weight': jnp.ones((1,))}
    return state, batch, steps.empty_metrics(), jax.random.key(2)

  return Case('train_step', f'Classifier/{family}', length, inputs,
              {TRAIN_STEP: steps.make_train_step('classification')},
              model_flops=training_matmul_flops(sizes, family, length,
                                                num_layers))


def training_matmul_flops(sizes: Sizes, family: str, length: int,
                          num_layers: int, causal: bool = False) -> float:
  """A train step's FLOPs on one sequence as maxtext counts them for MFU:
  matmuls only, the backward twice the forward. Per layer, forward: the q,
  k, v and output projections 8 n d^2, the MLP 4 n d mlp, attention
  4 n l d over segments of l (l = n for the transformer), halved when
  causal. SimMIM's state attention and merge act on m = n / l vectors and
  are left out (under 1% at l = 128), as are embeddings and the head."""
  n, d = length, sizes.d_model
  span = length if family == 'transformer' else min(sizes.segment_len, n)
  attention_flops = 4 * n * span * d / (2 if causal else 1)
  per_layer = 8 * n * d * d + 4 * n * d * sizes.mlp_dim + attention_flops
  return 3.0 * num_layers * per_layer


def decode_case(sizes: Sizes, family: str, attention_kind: str,
                length: int) -> Case:
  """One token of a CausalLM's cached decoding at position length - 1 (the
  cache full but for it), batch 1: what each generated token costs once
  `length` tokens of context are held.

  fn(params, cache, tokens, positions) -> (logits, cache).
  """
  config = dataclasses.replace(
      model_config(sizes, family, length, sizes.num_layers), head='lm',
      attention_kind=attention_kind, num_templates=sizes.num_templates)
  model = models.CausalLM(config)

  def inputs():
    tokens = jnp.zeros((1, sizes.segment_len), jnp.int32)
    params = nn.unbox(init_like(model.init, jax.random.key(1),
                                tokens)['params'])
    cache = decoding.init_cache(model, params, 1, length)
    return (params, cache, jnp.zeros((1,), jnp.int32),
            jnp.full((1,), length - 1, jnp.int32))

  name = f'CausalLM/{family}' + ('+templates' if attention_kind == 'templates'
                                 else '')
  return Case('decode', name, length, inputs,
              {DECODE_STEP: functools.partial(decoding.decode_step, model)},
              carried=1)


def jax_cases(sizes: Sizes, lengths: tuple[int, ...],
              train_step_lengths: tuple[int, ...],
              train_step_families: tuple[str, ...],
              decode_lengths: tuple[int, ...] = (),
              decode_kinds: tuple[tuple[str, str], ...] = ()) -> list[Case]:
  """Every op and layer (FORWARD and BACKWARD) at each of `lengths`, then the
  train step of each of `train_step_families` at each of
  `train_step_lengths`, then a decoding step of each of `decode_kinds` at
  each of `decode_lengths`."""
  all_cases = []
  for group, workloads in (('op', op_workloads), ('layer', layer_workloads)):
    for name in workloads(sizes, lengths[0]):
      for length in lengths:
        forward, inputs = workloads(sizes, length)[name]
        all_cases.append(Case(group, name, length, inputs, {
            FORWARD: forward, BACKWARD: with_backward(forward)}))
  for family in train_step_families:
    all_cases += [train_step_case(sizes, family, length, sizes.num_layers)
                  for length in train_step_lengths]
  for family, attention_kind in decode_kinds:
    all_cases += [decode_case(sizes, family, attention_kind, length)
                  for length in decode_lengths]
  return all_cases


def torch_calls(torch: Any, sizes: Sizes, name: str, length: int,
                device: str) -> dict[str, Callable[[], Any]]:
  """The PyTorch peer `name` (a TORCH_TWINS key) on `device`, by mode.

  'torch_sdpa_segments': scaled_dot_product_attention on the segments as
  a batch, [length / segment_len, heads, segment_len, head_dim];
  'torch_sdpa_full': on the whole sequence, [1, heads, length, head_dim].
  BACKWARD returns autograd's gradients of sum(out * cotangent) w.r.t.
  q, k, v; FORWARD runs under inference mode. Each call returns once the
  device has finished.
  """
  if name == 'torch_sdpa_segments':
    shape = (length // sizes.segment_len, sizes.num_heads, sizes.segment_len,
             sizes.head_dim)
  else:
    shape = (1, sizes.num_heads, length, sizes.head_dim)
  generator = torch.Generator().manual_seed(0)
  q, k, v, cotangent = (
      torch.randn(shape, generator=generator).to(device,
                                                 getattr(torch, sizes.dtype))
      for _ in range(4))
  for x in (q, k, v):
    x.requires_grad_(True)
  sdpa = torch.nn.functional.scaled_dot_product_attention
  wait = torch.cuda.synchronize if device == 'cuda' else lambda: None

  def forward():
    with torch.inference_mode():
      out = sdpa(q, k, v)
    wait()
    return out

  def forward_backward():
    grads = torch.autograd.grad((sdpa(q, k, v) * cotangent).sum(), (q, k, v))
    wait()
    return grads
  return {FORWARD: forward, BACKWARD: forward_backward}
