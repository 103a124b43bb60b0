"""Template memory: memory-in-memory inference for whole models with
template attention.

`build_cache` runs a model once on a fixed context and keeps, for every
template layer, the K template outputs per head (and per segment):
[layers, batch, (segments,) heads, K, head_dim], the template memory (the
flax collection `TEMPLATE_MEMORY`). `apply_with_cache` runs the model on new
inputs whose template layers answer every query from that memory (nearest
template + gather, O(K * head_dim) per query) instead of attending over their
own keys: new inputs read the context's attention memory. On the context
itself, the run from memory equals the plain one (the same operations; up to
float rounding where XLA fuses the two programs differently).

Not the decoding cache of generation (inference/decoding.py); the public
names keep "cache" for compatibility.
"""

from typing import Any

from flax import linen as nn
import jax

from simmim_jax.models.template_layer import TEMPLATE_MEMORY


def _check_model(model: nn.Module) -> None:
  cfg = model.config
  if cfg.attention_kind != 'templates':
    raise ValueError("a template memory needs attention_kind='templates', "
                     f'got {cfg.attention_kind!r}')
  if cfg.head != 'classifier':
    # The LM's causal templates keep running prefixes, not a fixed context's
    # outputs; a dual encoder runs its encoder on two contexts.
    raise ValueError(f"a template memory serves head 'classifier', got "
                     f'{cfg.head!r}')


def build_cache(model: nn.Module, params: Any, *inputs: Any) -> Any:
  """The template memory of the context `inputs` (the model's positional
  arguments, e.g. tokens [batch, length] and mask): every template layer's
  outputs."""
  _check_model(model)
  _, variables = model.apply({'params': params}, *inputs,
                             mutable=[TEMPLATE_MEMORY])
  return variables[TEMPLATE_MEMORY]


def apply_with_cache(model: nn.Module, params: Any, cache: Any,
                     *inputs: Any) -> jax.Array:
  """The model's outputs on `inputs` with every template layer answered
  from the template memory `cache` (`build_cache` on a context with the same
  batch size and at least as many segments)."""
  _check_model(model)
  return model.apply({'params': params, TEMPLATE_MEMORY: cache}, *inputs)
