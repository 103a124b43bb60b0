"""Attention weights of a model's layers, for plots and analysis.

The blocks record their attention queries, keys and normalised segment
states (flax `sow`, free unless 'intermediates' is mutable); the weights are
recomputed from them with the same functions the model uses.
"""

from typing import Any, Optional

from flax import linen as nn
import jax

from simmim_jax.models.model_config import ModelConfig
from simmim_jax.ops import segment_loop
from simmim_jax.ops import segment_states


def attention_maps(model: nn.Module, variables: Any, *inputs: jax.Array,
                   layer: int = 0) -> dict[str, Optional[jax.Array]]:
  """Attention weights of encoder block `layer` for `model.apply(*inputs)`.

  `inputs` are the model's positional inputs, e.g. (tokens, mask); for the
  dual encoder only the first input's encoder call is used.

  Returns:
    'segment': [batch, num_segments, heads, segment_len, segment_len] weights
      of segment attention (for 'transformer', [batch, 1, heads, length,
      length]: full attention is one segment).
    'state': [batch, num_states, num_states] segment-state attention
      weights (row i over states j; num_states = num_segments *
      states_per_segment), or None when the model has no states.
  """
  config: ModelConfig = model.config
  if not 0 <= layer < config.num_layers:
    raise ValueError(f'layer must be in [0, {config.num_layers}), got {layer}')
  _, state = model.apply(variables, *inputs, mutable=['intermediates'])
  blocks = find_subtree(state['intermediates'], 'blocks')
  params = find_subtree(nn.unbox(variables['params']), 'blocks')
  tokens, mask = inputs[0], inputs[1] if len(inputs) > 1 else None
  if config.head == 'dual_encoder':
    mask = inputs[2] if len(inputs) > 2 else None
  causal = config.head == 'lm'
  # sow() keeps a tuple with one entry per call; the first is `inputs[0]`'s.
  q = blocks['attention']['queries'][0][layer]
  k = blocks['attention']['keys'][0][layer]
  segment_len = (tokens.shape[1] if config.family == 'transformer'
                 else config.segment_len)
  maps = {'segment': segment_loop.segment_attention_weights(
      q, k, segment_len, mask=mask, causal=causal), 'state': None}
  if config.uses_segment_states:
    states = blocks['state_merge']['states'][0][layer]
    merge = params['state_merge']
    per_segment = config.states_per_segment
    _, state_mask = segment_states.pick_states(
        tokens[..., None], config.segment_len, per_segment, mask=mask,
        causal=causal)
    maps['state'] = segment_states.segment_state_weights(
        states, merge['w_q'][layer], merge['w_k'][layer], mask=state_mask,
        causal=causal, exclude_self=config.exclude_self,
        states_per_segment=per_segment)
  return maps


def find_subtree(tree: Any, name: str) -> Any:
  """The subtree under the first key `name`, searching depth-first."""
  if not isinstance(tree, dict):
    return None
  if name in tree:
    return tree[name]
  for child in tree.values():
    found = find_subtree(child, name)
    if found is not None:
      return found
  return None
