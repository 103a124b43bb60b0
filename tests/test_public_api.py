"""`import simmim_jax` exposes the same names after the package was grouped
into subpackages, and each is the object its owner module defines."""

import importlib

import simmim_jax

# Every name `import simmim_jax` gives (the grouping into ops/,
# models/, inference/ and training/ kept them), with the module that owns it.
PUBLIC_API = {
    'simmim_jax.ops.attention': (
        'cross_attention', 'full_attention', 'segment_attention'),
    'simmim_jax.ops.segments': ('masked_softmax',),
    'simmim_jax.ops.segment_loop': ('segment_attention_weights',),
    'simmim_jax.ops.segment_states': (
        'segment_state_attention', 'segment_state_weights', 'state_readout'),
    'simmim_jax.ops.hierarchy': (
        'AGGREGATORS', 'aggregator_params_spec', 'hierarchical_aggregate'),
    'simmim_jax.ops.templates': (
        'assign_templates', 'causal_template_attention',
        'causal_template_outputs', 'query_template_cache',
        'segment_template_attention', 'segment_template_outputs',
        'template_attention', 'template_outputs'),
    'simmim_jax.ops.template_learning': (
        'ema_kmeans_update', 'quantize', 'reseed_dead_templates',
        'vq_losses'),
    'simmim_jax.models.model_config': ('ModelConfig',),
    'simmim_jax.models.layers': ('GlobalPool', 'SMIBlock'),
    'simmim_jax.models.models': (
        'CausalLM', 'Classifier', 'DualEncoderClassifier', 'Encoder',
        'MaskedModel', 'Seq2Seq', 'build_model'),
    'simmim_jax.inference.decoding': (
        'decode_step', 'generate', 'init_cache', 'sample_logits'),
    'simmim_jax.inference.template_memory': ('apply_with_cache',
                                             'build_cache'),
}


def test_every_public_name_imports_from_the_package():
  for owner, names in PUBLIC_API.items():
    module = importlib.import_module(owner)
    for name in names:
      assert getattr(simmim_jax, name) is getattr(module, name), name


def test_all_lists_exactly_the_public_names():
  pinned = {name for names in PUBLIC_API.values() for name in names}
  assert len(pinned) == 39
  assert set(simmim_jax.__all__) == pinned
  assert len(simmim_jax.__all__) == len(pinned)  # no name listed twice
  assert simmim_jax.__version__ == '0.1.0'
