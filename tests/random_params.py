"""Seeded random parameters of the shapes a model's init gives, built with
nothing compiled: tests of what an apply computes need parameters, not the
initialisers' values (every test that trains runs the real init)."""

import zlib

import jax
import numpy as np


def _fill(path, leaf, scale):
  """A seeded draw of leaf's shape; the seed is its name, so equally named
  parameters of two models are equal."""
  seed = zlib.crc32(jax.tree_util.keystr(path).encode())
  return np.random.default_rng(seed).normal(
      scale=scale, size=leaf.shape).astype(leaf.dtype)


def random_params(model, *args, scale: float = 0.3) -> dict:
  """{'params': random parameters of the shapes model.init(key, *args)
  gives}. jax.eval_shape compiles nothing; an init compiles about 3x longer
  than an apply."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)['params']
  return {'params': jax.tree_util.tree_map_with_path(
      lambda path, leaf: _fill(path, leaf, scale), shapes)}
