"""simmim_jax: segment attention with segment states, hierarchical encoding."""

# Before JAX starts its CPU threads: see allocator.py.
from simmim_jax import allocator as _allocator

_allocator.tune_malloc()

from simmim_jax.inference.decoding import decode_step
from simmim_jax.inference.decoding import generate
from simmim_jax.inference.decoding import init_cache
from simmim_jax.inference.decoding import sample_logits
from simmim_jax.inference.template_memory import apply_with_cache
from simmim_jax.inference.template_memory import build_cache
from simmim_jax.models.layers import GlobalPool
from simmim_jax.models.layers import SMIBlock
from simmim_jax.models.model_config import ModelConfig
from simmim_jax.models.models import CausalLM
from simmim_jax.models.models import Classifier
from simmim_jax.models.models import DualEncoderClassifier
from simmim_jax.models.models import Encoder
from simmim_jax.models.models import MaskedModel
from simmim_jax.models.models import Seq2Seq
from simmim_jax.models.models import build_model
from simmim_jax.ops.attention import cross_attention
from simmim_jax.ops.attention import full_attention
from simmim_jax.ops.attention import segment_attention
from simmim_jax.ops.hierarchy import AGGREGATORS
from simmim_jax.ops.hierarchy import aggregator_params_spec
from simmim_jax.ops.hierarchy import hierarchical_aggregate
from simmim_jax.ops.segment_loop import segment_attention_weights
from simmim_jax.ops.segment_states import segment_state_attention
from simmim_jax.ops.segment_states import segment_state_weights
from simmim_jax.ops.segment_states import state_readout
from simmim_jax.ops.segments import masked_softmax
from simmim_jax.ops.template_learning import ema_kmeans_update
from simmim_jax.ops.template_learning import quantize
from simmim_jax.ops.template_learning import reseed_dead_templates
from simmim_jax.ops.template_learning import vq_losses
from simmim_jax.ops.templates import assign_templates
from simmim_jax.ops.templates import causal_template_attention
from simmim_jax.ops.templates import causal_template_outputs
from simmim_jax.ops.templates import query_template_cache
from simmim_jax.ops.templates import segment_template_attention
from simmim_jax.ops.templates import segment_template_outputs
from simmim_jax.ops.templates import template_attention
from simmim_jax.ops.templates import template_outputs

__all__ = [
    'aggregator_params_spec',
    'AGGREGATORS',
    'apply_with_cache',
    'assign_templates',
    'build_cache',
    'build_model',
    'causal_template_attention',
    'causal_template_outputs',
    'CausalLM',
    'Classifier',
    'cross_attention',
    'decode_step',
    'DualEncoderClassifier',
    'ema_kmeans_update',
    'Encoder',
    'full_attention',
    'generate',
    'GlobalPool',
    'hierarchical_aggregate',
    'init_cache',
    'masked_softmax',
    'MaskedModel',
    'ModelConfig',
    'quantize',
    'query_template_cache',
    'reseed_dead_templates',
    'sample_logits',
    'segment_attention',
    'segment_attention_weights',
    'segment_state_attention',
    'segment_state_weights',
    'segment_template_attention',
    'segment_template_outputs',
    'Seq2Seq',
    'SMIBlock',
    'state_readout',
    'template_attention',
    'template_outputs',
    'vq_losses',
]

__version__ = '0.1.0'
