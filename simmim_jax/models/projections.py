"""The projections every layer is built from: dense kernels with logical
axes, layer norm, the MLP, and the per-head projections of attention.

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'kv',
'vocab', ...) that the training stack maps to mesh axes.
"""

from typing import Optional

from flax import linen as nn
import jax

from simmim_jax.models.model_config import ModelConfig


def dense_init(*axes: Optional[str]):
  # DenseGeneral initialises its kernel flattened to 2-D, so fans are plain.
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def layer_norm(config: ModelConfig, name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      dtype=config.compute_dtype, param_dtype=config.storage_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


class Mlp(nn.Module):
  """Dense(hidden) -> GELU -> dropout -> Dense(out).  x: [..., embed]."""
  config: ModelConfig
  out_dim: Optional[int] = None   # default: d_model
  out_axis: str = 'embed'

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dense = lambda features, axes, name: nn.Dense(
        features, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
        kernel_init=dense_init(*axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                               axes[-1:]),
        name=name)
    x = dense(cfg.mlp_dim, ('embed', 'mlp'), 'wi')(x)
    x = nn.gelu(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return dense(self.out_dim or cfg.d_model, ('mlp', self.out_axis), 'wo')(x)


def head_projection(config: ModelConfig, name: str) -> nn.DenseGeneral:
  """[..., embed] -> [..., heads, head_dim] (query, key or value)."""
  return nn.DenseGeneral(
      (config.num_heads, config.head_dim), dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, use_bias=False,
      kernel_init=dense_init('embed', 'heads', 'kv'), name=name)


def output_projection(config: ModelConfig,
                      name: str = 'out') -> nn.DenseGeneral:
  """[..., heads, head_dim] -> [..., embed]."""
  return nn.DenseGeneral(
      config.d_model, axis=(-2, -1), dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, use_bias=False,
      kernel_init=dense_init('heads', 'kv', 'embed'), name=name)


