"""Using a trained model: generation with the decoding cache, template
memory (answering queries from a context's template outputs) and seq2seq
evaluation."""
