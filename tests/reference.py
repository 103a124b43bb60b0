"""Float64 NumPy loop implementations of the equations, written independently
of the library (no reshapes into segments, no masking tricks): the tests'
ground truth."""

import math

import numpy as np


def _softmax_weighted(scores, values):
  """sum_j softmax(scores)_j values_j over a list; zeros for an empty list."""
  if not scores:
    return np.zeros(values[0].shape if values else (), np.float64)
  scores = np.asarray(scores, np.float64)
  weights = np.exp(scores - scores.max())
  weights /= weights.sum()
  return sum(w * v for w, v in zip(weights, values))


def segment_attention(q, k, v, segment_len, mask=None, causal=False):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  batch, length, heads, head_dim = q.shape
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask)
  out = np.zeros_like(q)
  for b in range(batch):
    for h in range(heads):
      for t in range(length):
        start = (t // segment_len) * segment_len
        keys = [j for j in range(start, min(start + segment_len, length))
                if mask[b, j] and (not causal or j <= t)]
        scores = [q[b, t, h] @ k[b, j, h] / math.sqrt(head_dim) for j in keys]
        if keys:
          out[b, t, h] = _softmax_weighted(scores, [v[b, j, h] for j in keys])
  return out


def cross_attention(q, k, v, key_mask=None):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  batch, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  key_mask = (np.ones((batch, kv_len), bool) if key_mask is None
              else np.asarray(key_mask))
  out = np.zeros_like(q)
  for b in range(batch):
    for h in range(heads):
      for t in range(q_len):
        keys = [j for j in range(kv_len) if key_mask[b, j]]
        scores = [q[b, t, h] @ k[b, j, h] / math.sqrt(head_dim) for j in keys]
        if keys:
          out[b, t, h] = _softmax_weighted(scores, [v[b, j, h] for j in keys])
  return out


def segment_state_attention(states, w_q, w_k, w_v, mask=None, causal=False,
                            exclude_self=True, states_per_segment=1):
  """State i (of segment i // states_per_segment) over the other segments'
  states."""
  s, w_q, w_k, w_v = (np.asarray(a, np.float64)
                      for a in (states, w_q, w_k, w_v))
  batch, num_states, _ = s.shape
  key_dim = w_q.shape[1]
  mask = (np.ones((batch, num_states), bool) if mask is None
          else np.asarray(mask))
  segment = lambda t: t // states_per_segment
  out = s.copy()
  for b in range(batch):
    for i in range(num_states):
      others = [j for j in range(num_states) if mask[b, j] and (
          segment(j) < segment(i) if causal
          else segment(j) != segment(i) or not exclude_self)]
      if not others:
        continue
      scores = [(s[b, i] @ w_q) @ (s[b, j] @ w_k) / math.sqrt(key_dim)
                for j in others]
      out[b, i] = s[b, i] + _softmax_weighted(
          scores, [s[b, j] @ w_v for j in others])
  return out


def state_readout(q, keys, values, segment_len, states_per_segment=1,
                  mask=None, causal=False):
  """Token t over the states it may read: causal, those of segments before
  t's; otherwise every real one."""
  q, keys, values = (np.asarray(a, np.float64) for a in (q, keys, values))
  batch, length, heads, head_dim = q.shape
  num_states = keys.shape[1]
  mask = (np.ones((batch, num_states), bool) if mask is None
          else np.asarray(mask))
  out = np.zeros_like(q)
  for b in range(batch):
    for t in range(length):
      readable = [s for s in range(num_states) if mask[b, s] and (
          not causal or s // states_per_segment < t // segment_len)]
      for h in range(heads):
        scores = [q[b, t, h] @ keys[b, s, h] / math.sqrt(head_dim)
                  for s in readable]
        if readable:
          out[b, t, h] = _softmax_weighted(
              scores, [values[b, s, h] for s in readable])
  return out


def state_query(state, state_keys, state_values, w_q, num_finished):
  """One finished segment's state per row over the first num_finished[b]
  cached state keys and values: s + sum_j softmax_j(s w_q . k_j) v_j."""
  s, keys, values, w_q = (np.asarray(a, np.float64)
                          for a in (state, state_keys, state_values, w_q))
  key_dim = w_q.shape[1]
  out = s.copy()
  for b in range(s.shape[0]):
    finished = range(int(num_finished[b]))
    scores = [(s[b] @ w_q) @ keys[b, j] / math.sqrt(key_dim)
              for j in finished]
    if scores:
      out[b] = s[b] + _softmax_weighted(scores, [values[b, j]
                                                 for j in finished])
  return out


# Pair aggregators on single vectors.

def concat_pair(params, left, right):
  return (np.concatenate([left, right]) @ np.float64(params['kernel'])
          + np.float64(params['bias']))


def weighted_sum_pair(params, left, right):
  logits = np.float64(params['logits'])
  weights = np.exp(logits) / np.exp(logits).sum(axis=0)
  return weights[0] * left + weights[1] * right


def attention_pair(params, left, right):
  query, key, value, out = (np.float64(params[n])
                            for n in ('query', 'key', 'value', 'out'))
  heads, head_dim = query.shape
  result = np.zeros(out.shape[-1])
  for h in range(heads):
    scores = [query[h] @ (node @ key[:, h]) / math.sqrt(head_dim)
              for node in (left, right)]
    pooled = _softmax_weighted(scores,
                               [left @ value[:, h], right @ value[:, h]])
    result += pooled @ out[h]
  return result


PAIRS = {'concat': concat_pair, 'weighted_sum': weighted_sum_pair,
         'attention': attention_pair}


def hierarchical_aggregate(nodes, params, aggregator, mask=None,
                           num_levels=None, per_level=False):
  """Recursive Python: merge neighbours while more than one node is left."""
  nodes = np.asarray(nodes, np.float64)
  batch, num_segments, _ = nodes.shape
  mask = (np.ones((batch, num_segments), bool) if mask is None
          else np.asarray(mask))
  combine = PAIRS[aggregator]

  def reduce(level_nodes, level):
    # level_nodes: list of (vector or None for a masked node).
    if len(level_nodes) == 1 or (num_levels is not None
                                 and level == num_levels):
      real = [n for n in level_nodes if n is not None]
      return np.mean(real, axis=0) if real else np.zeros(nodes.shape[-1])
    level_params = ({n: p[level] for n, p in params.items()} if per_level
                    else params)
    merged = []
    for i in range(0, len(level_nodes), 2):
      left = level_nodes[i]
      right = level_nodes[i + 1] if i + 1 < len(level_nodes) else None
      if left is not None and right is not None:
        merged.append(combine(level_params, left, right))
      else:
        merged.append(left if left is not None else right)
    return reduce(merged, level + 1)

  return np.stack([
      reduce([nodes[b, i] if mask[b, i] else None
              for i in range(num_segments)], 0)
      for b in range(batch)])


# Attention templates.

def assign_templates(queries, templates):
  """Nearest template per query and head; the first of equal distances."""
  q, a = np.asarray(queries, np.float64), np.asarray(templates, np.float64)
  batch, length, heads, _ = q.shape
  out = np.zeros((batch, length, heads), np.int64)
  for b in range(batch):
    for t in range(length):
      for h in range(heads):
        distances = [np.sum((q[b, t, h] - a[h, c]) ** 2)
                     for c in range(a.shape[1])]
        best = 0
        for c, d in enumerate(distances):
          if d < distances[best]:
            best = c
        out[b, t, h] = best
  return out


def segment_template_attention(templates, assignments, k, v, segment_len,
                               mask=None, causal=False):
  """Position t: its template's attention over the real keys of its segment
  (and only keys <= t when causal)."""
  a, k, v = (np.asarray(x, np.float64) for x in (templates, k, v))
  batch, length, heads, head_dim = k.shape
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask)
  out = np.zeros_like(k)
  for b in range(batch):
    for h in range(heads):
      for t in range(length):
        template = a[h, int(assignments[b, t, h])]
        start = (t // segment_len) * segment_len
        stop = t + 1 if causal else min(start + segment_len, length)
        keys = [j for j in range(start, stop) if mask[b, j]]
        scores = [template @ k[b, j, h] / math.sqrt(head_dim) for j in keys]
        if keys:
          out[b, t, h] = _softmax_weighted(scores, [v[b, j, h] for j in keys])
  return out


def template_attention(templates, assignments, k, v, mask=None, causal=False):
  """The whole sequence as one segment."""
  return segment_template_attention(templates, assignments, k, v,
                                    max(np.shape(k)[1], 1), mask, causal)


def ema_kmeans_update(sizes, sums, queries, assignments, decay, mask=None,
                      eps=1e-5):
  """Per head and template: EMA of counts and sums, Laplace-smoothed means."""
  sizes, sums = np.float64(sizes), np.float64(sums)
  q = np.asarray(queries, np.float64)
  batch, length, heads, _ = q.shape
  num_templates = sizes.shape[1]
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask)
  counts, totals = np.zeros_like(sizes), np.zeros_like(sums)
  for b in range(batch):
    for t in range(length):
      for h in range(heads):
        if mask[b, t]:
          counts[h, assignments[b, t, h]] += 1
          totals[h, assignments[b, t, h]] += q[b, t, h]
  new_sizes = decay * sizes + (1 - decay) * counts
  new_sums = decay * sums + (1 - decay) * totals
  templates = np.zeros_like(sums)
  for h in range(heads):
    n = new_sizes[h].sum()
    for c in range(num_templates):
      smoothed = (new_sizes[h, c] + eps) / (n + num_templates * eps) * n
      templates[h, c] = new_sums[h, c] / smoothed
  return new_sizes, new_sums, templates
