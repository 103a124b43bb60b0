"""simmim_jax: segment attention with segment states, hierarchical encoding."""

# Before JAX starts its CPU threads: see allocator.py.
from simmim_jax import allocator as _allocator
_allocator.tune_malloc()

from simmim_jax.attention import cross_attention
from simmim_jax.attention import full_attention
from simmim_jax.attention import masked_softmax
from simmim_jax.attention import segment_attention
from simmim_jax.attention import segment_attention_weights
from simmim_jax.attention import segment_state_attention
from simmim_jax.attention import segment_state_weights
from simmim_jax.config import ModelConfig
from simmim_jax.decoding import decode_step
from simmim_jax.decoding import generate
from simmim_jax.decoding import init_cache
from simmim_jax.decoding import sample_logits
from simmim_jax.hierarchy import AGGREGATORS
from simmim_jax.hierarchy import aggregator_params_spec
from simmim_jax.hierarchy import hierarchical_aggregate
from simmim_jax.layers import GlobalPool
from simmim_jax.layers import SMIBlock
from simmim_jax.models import CausalLM
from simmim_jax.models import Classifier
from simmim_jax.models import DualEncoderClassifier
from simmim_jax.models import Encoder
from simmim_jax.models import MaskedModel
from simmim_jax.models import Seq2Seq
from simmim_jax.models import build_model
from simmim_jax.template_cache import apply_with_cache
from simmim_jax.template_cache import build_cache
from simmim_jax.template_learning import ema_kmeans_update
from simmim_jax.template_learning import quantize
from simmim_jax.template_learning import reseed_dead_templates
from simmim_jax.template_learning import vq_losses
from simmim_jax.templates import assign_templates
from simmim_jax.templates import causal_template_attention
from simmim_jax.templates import causal_template_outputs
from simmim_jax.templates import query_template_cache
from simmim_jax.templates import segment_template_attention
from simmim_jax.templates import segment_template_outputs
from simmim_jax.templates import template_attention
from simmim_jax.templates import template_outputs

__version__ = '0.1.0'
