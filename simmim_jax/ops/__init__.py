"""Pure jnp functions, no parameters: segment, state, full and cross
attention; the hierarchy; templates and their learning losses; attention on
the decoding cache; which positions masked pretraining hides."""
