"""Flax linen modules and `ModelConfig`: the layers, the model classes
(encoder, classifier, dual encoder, causal LM, seq2seq), the template layer
and a trained model's attention maps."""
