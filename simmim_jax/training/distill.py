"""Distillation: fit a template library to a trained model's queries.

The seed's recipe: train the original model (softmax attention), collect the
attention queries it produces on training data, cluster them per layer and
head (k-means), and swap the centres in as the template library of an
otherwise identical model with attention_kind='templates'.
"""

from typing import Any, Iterable

from absl import logging
from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simmim_jax import checks
from simmim_jax.models.attention_maps import find_subtree
from simmim_jax.ops import templates as templates_lib
from simmim_jax.training import run_dir

LIBRARY_PATH = ('attention', 'templates', 'library')


def collect_queries(model: nn.Module, params: Any,
                    batches: Iterable[tuple[jax.Array, jax.Array]],
                    max_queries: int) -> np.ndarray:
  """Attention queries of every layer at real positions.

  Args:
    model: a classifier or dual encoder (its blocks sow their queries).
    params: its parameters.
    batches: (tokens [batch, length], mask [batch, length]) pairs.
    max_queries: stop after this many real positions.

  Returns:
    [layers, num_queries, heads, head_dim] float32.
  """
  apply = jax.jit(lambda p, t, m: model.apply(
      {'params': p}, t, m, mutable=['intermediates'])[1])
  collected, total = [], 0
  for tokens, mask in batches:
    found = find_subtree(apply(params, tokens, mask)['intermediates'],
                         'blocks')
    queries = np.asarray(found['attention']['queries'][0])  # [L, b, n, h, d]
    real = np.asarray(mask, bool)
    collected.append(queries[:, real])  # [L, real positions, h, d]
    total += collected[-1].shape[1]
    if total >= max_queries:
      break
  if not collected:
    raise ValueError('collect_queries got no batches')
  return np.concatenate(collected, axis=1)[:, :max_queries].astype(np.float32)


def kmeans(points: jax.Array, num_clusters: int, rng: jax.Array,
           iterations: int = 20) -> jax.Array:
  """Per-head Lloyd's k-means.

  Args:
    points: [num_points, heads, dim].
    num_clusters: K <= num_points.
    rng: seeds the k-means++ choice of initial centres.
    iterations: Lloyd steps; an empty cluster keeps its centre.

  Returns:
    [heads, K, dim] centres.
  """
  num_points, heads, _ = points.shape
  if not 0 < num_clusters <= num_points:
    raise ValueError(f'num_clusters must be in [1, {num_points}] (the number '
                     f'of points), got {num_clusters}')
  centres = jax.vmap(_kmeans_plus_plus, in_axes=(1, None, 0))(
      points, num_clusters, jax.random.split(rng, heads))  # [heads, K, dim]
  queries = points[None]  # [1, num_points, heads, dim]

  def step(centres, _):
    assignments = templates_lib.assign_templates(queries, centres)[0]
    one_hot = jax.nn.one_hot(assignments, num_clusters)  # [points, heads, K]
    counts = one_hot.sum(axis=0)  # [heads, K]
    sums = jnp.einsum('phk,phd->hkd', one_hot, points)
    new = sums / jnp.maximum(counts, 1.0)[..., None]
    return jnp.where(counts[..., None] > 0, new, centres), None

  centres, _ = jax.lax.scan(step, centres, None, length=iterations)
  return centres


def _kmeans_plus_plus(points, num_clusters, rng):
  """k-means++ seeding (Arthur & Vassilvitskii 2007) of one head's points
  [num_points, dim]: each next centre is drawn with probability proportional
  to its squared distance from the centres so far."""
  keys = jax.random.split(rng, num_clusters)
  first = points[jax.random.randint(keys[0], (), 0, points.shape[0])]
  centres = jnp.zeros((num_clusters, points.shape[1]), points.dtype)
  centres = centres.at[0].set(first)
  nearest = jnp.sum((points - first) ** 2, axis=-1)

  def pick(carry, i):
    centres, nearest = carry
    logits = jnp.log(jnp.maximum(nearest, 1e-30))
    chosen = points[jax.random.categorical(keys[i], logits)]
    nearest = jnp.minimum(nearest, jnp.sum((points - chosen) ** 2, axis=-1))
    return (centres.at[i].set(chosen), nearest), None

  (centres, _), _ = jax.lax.scan(pick, (centres, nearest),
                                 jnp.arange(1, num_clusters))
  return centres


def fit_library(queries: np.ndarray, num_templates: int, seed: int,
                iterations: int = 20) -> np.ndarray:
  """[layers, points, heads, d] queries -> [layers, heads, K, d] library."""
  run = jax.jit(kmeans, static_argnums=(1, 3))
  rngs = jax.random.split(jax.random.key(seed), queries.shape[0])
  return np.stack([np.asarray(run(jnp.asarray(q), num_templates, rng,
                                  iterations))
                   for q, rng in zip(queries, rngs)])


def library_fit(queries: np.ndarray, library: np.ndarray) -> dict[str, float]:
  """How well a library covers queries, pooled over layers and heads.

  Args: queries [layers, points, heads, d]; library [layers, heads, K, d].

  Returns:
    relative_error: sum ||q - a_c(q)||^2 / sum ||q - mean_q||^2 with a_c(q)
      the nearest template and mean_q its head's mean query: 0 = exact,
      1 = no better than one template at the mean.
    templates_used: share of templates nearest to at least one query.
  """
  error = spread = used = 0.0
  for layer_queries, layer_library in zip(queries, library):
    q = jnp.asarray(layer_queries)[None]  # [1, points, heads, d]
    assignments = templates_lib.assign_templates(q, jnp.asarray(layer_library))
    nearest = np.take_along_axis(
        np.asarray(layer_library)[None],  # [1, heads, K, d]
        np.asarray(assignments[0]).T[None, :, :, None], axis=2)[0]
    q = np.asarray(layer_queries, np.float64)
    error += np.sum((q - np.swapaxes(nearest, 0, 1)) ** 2)
    spread += np.sum((q - q.mean(axis=0)) ** 2)
    for h in range(layer_library.shape[0]):
      used += len(np.unique(np.asarray(assignments[0, :, h])))
  return {'relative_error': float(error / max(spread, 1e-30)),
          'templates_used': used / (library.shape[0] * library.shape[1]
                                    * library.shape[2])}


def swap_in_library(template_params: Any, source_params: Any,
                    library: np.ndarray) -> Any:
  """Parameters for the template model: every parameter from the trained
  source model, and `library` [layers, heads, K, d] as the template library
  (None: every parameter, library included, from the source). Raises
  ValueError naming a parameter the two models do not share."""
  flat_target = traverse_util.flatten_dict(template_params)
  flat_source = traverse_util.flatten_dict(source_params)
  merged = {}
  for path, value in flat_target.items():
    if path[-len(LIBRARY_PATH):] == LIBRARY_PATH and library is not None:
      if tuple(library.shape) != tuple(np.shape(value)):
        raise ValueError(f'library has shape {library.shape}, the model needs '
                         f'{np.shape(value)}')
      merged[path] = jnp.asarray(library, value.dtype)
    else:
      merged[path] = _matching(flat_source, path, value, 'source model')
  return traverse_util.unflatten_dict(merged)


def _matching(flat_source: dict, path: tuple, value: Any, source: str) -> Any:
  """flat_source[path], which must exist with the shape of `value`."""
  if path not in flat_source:
    raise ValueError(f'parameter {"/".join(path)} is not in the {source}')
  if np.shape(flat_source[path]) != np.shape(value):
    raise ValueError(f'parameter {"/".join(path)} has shape '
                     f'{np.shape(flat_source[path])} in the {source}, '
                     f'{np.shape(value)} here')
  return flat_source[path]


def load_trained_params(workdir: str) -> tuple[Any, ml_collections.ConfigDict]:
  """(parameters of the latest checkpoint, saved config) of the run that
  init_from names (see `load_source_run`)."""
  run = load_source_run(workdir)
  return run.params, run.config


def load_source_run(workdir: str) -> run_dir.Run:
  """The init_from run at its latest checkpoint, finished or not."""
  try:
    run = run_dir.load_run(workdir, 'latest', finished=False)
  except checks.MissingPathError as error:
    raise checks.MissingPathError(f'init_from: {error}') from None
  if not run_dir.is_finished(workdir):
    # Allowed (a pretraining's intermediate checkpoint is a fair start), but
    # a run still training gives a different start each time it is read.
    logging.warning(
        'init_from=%r has not finished (no %s): loading its latest '
        'checkpoint, step %d of num_steps=%s', workdir, run_dir.RESULTS_FILE,
        run.step, run.config.get('num_steps'))
  return run


def pretrained_encoder(fresh_params: Any, source_params: Any) -> Any:
  """fresh_params with every 'encoder' parameter from a masked-pretraining
  run's; the rest (pooling, task head) stays fresh. Raises ValueError naming
  a parameter the source lacks or has in another shape."""
  flat_source = traverse_util.flatten_dict(source_params)
  merged = {}
  for path, value in traverse_util.flatten_dict(fresh_params).items():
    merged[path] = (value if path[0] != 'encoder' else
                    _matching(flat_source, path, value, 'pretrained encoder'))
  return traverse_util.unflatten_dict(merged)


def initial_params(config, model, datasets, fresh_params: Any) -> Any:
  """Parameters to start a run from `config.init_from`: the trained run's
  parameters, plus (for a template model) a library that is fresh
  (template_init 'random') or fitted to the trained model's queries
  ('kmeans'). From a masked-pretraining run into another objective, only
  its encoder (`pretrained_encoder`)."""
  source = load_source_run(config.init_from)
  if (source.config.get('objective') == 'masked'
      and config.objective != 'masked'):
    return pretrained_encoder(fresh_params, source.params)
  fresh = traverse_util.flatten_dict(fresh_params)
  library_paths = [p for p in fresh if p[-len(LIBRARY_PATH):] == LIBRARY_PATH]
  if not library_paths:  # same kind of model: take every parameter
    return swap_in_library(fresh_params, source.params, None)
  library = np.asarray(fresh[library_paths[0]])
  if config.template_init == 'kmeans':
    batches = ((b['tokens'], b['mask']) for b in iter(datasets.train))
    queries = collect_queries(source.model, source.params, batches,
                              config.distill_queries)
    library = fit_library(queries, model.config.num_templates, config.seed)
  return swap_in_library(fresh_params, source.params, library)
