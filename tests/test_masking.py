"""Masked-token pretraining's pure functions (ops/masking.py): which positions
are hidden and what replaces them; test_pretraining.py trains with them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simmim_jax.ops import masking

MASK_ID = 20
# Jitted, as in the train and eval steps (and faster than op by op).
mask_batch = jax.jit(masking.mask_batch, static_argnums=3)
choose_positions = jax.jit(masking.choose_positions, static_argnums=2)
corrupt = jax.jit(masking.corrupt, static_argnums=3)


def _spec(mode, ratio=0.25):
  return masking.MaskingSpec(ratio=ratio, mode=mode, mean_span=3,
                             segment_len=8, mask_id=MASK_ID)


def _batch(rows=64, length=64, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(9, length + 1, rows)
  mask = np.arange(length)[None, :] < lengths[:, None]
  tokens = rng.integers(1, MASK_ID, (rows, length)) * mask
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


@pytest.mark.parametrize('mode', masking.MODES)
def test_masking_hides_about_ratio_of_real_positions_and_never_padding(mode):
  tokens, mask = _batch()
  keys = jax.random.split(jax.random.key(0), tokens.shape[0])
  corrupted, chosen = map(np.asarray, mask_batch(
      keys, tokens, mask, _spec(mode)))
  mask, tokens = np.asarray(mask), np.asarray(tokens)
  assert not np.any(chosen & ~mask)
  assert np.all(chosen.sum(1) >= 1)
  np.testing.assert_array_equal(corrupted[~chosen], tokens[~chosen])
  fraction = chosen.sum() / mask.sum()
  assert 0.15 < fraction < 0.35, fraction
  if mode == 'token':  # 80% mask token, 10% random, 10% kept
    replaced = corrupted[chosen]
    assert 0.7 < np.mean(replaced == MASK_ID) < 0.9
    assert np.all((replaced >= 1) & (replaced <= MASK_ID))
  else:
    assert np.all(corrupted[chosen] == MASK_ID)
  if mode == 'segment':  # whole segments (their real positions)
    segments = (chosen | ~mask).reshape(chosen.shape[0], -1, 8)
    touched = chosen.reshape(chosen.shape[0], -1, 8).any(-1)
    assert np.all(segments.all(-1)[touched])
  if mode == 'span':  # runs longer than one position on average
    starts = chosen & ~np.pad(chosen, ((0, 0), (1, 0)))[:, :-1]
    assert chosen.sum() / starts.sum() > 1.8


def test_masking_is_per_row_and_eval_keys_come_from_the_content():
  tokens, mask = _batch(rows=8)
  spec = _spec('token')
  keys = jax.random.split(jax.random.key(3), 8)
  whole = mask_batch(keys, tokens, mask, spec)[1]
  part = mask_batch(keys[2:5], tokens[2:5], mask[2:5], spec)[1]
  np.testing.assert_array_equal(whole[2:5], part)
  content = masking.content_keys(tokens)
  np.testing.assert_array_equal(
      mask_batch(content, tokens, mask, spec)[1][3],
      mask_batch(masking.content_keys(tokens[3:4]), tokens[3:4],
                         mask[3:4], spec)[1][0])


def _runs(row):
  """[(start, stop)] of the True runs of a bool row."""
  edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize('mode', masking.MODES)
def test_choose_positions_counts_per_row(mode):
  """token: round(ratio * real length) positions (at least one); segment:
  round(ratio * real segments) whole segments; span: at most round(ratio *
  length / mean_span) runs, none longer than the spans can make."""
  tokens, mask = _batch(rows=16)
  del tokens
  keys = jax.random.split(jax.random.key(1), 16)
  spec = _spec(mode)
  chosen = np.asarray(choose_positions(keys, mask, spec))
  for row, real in zip(chosen, np.asarray(mask)):
    length = real.sum()
    if mode == 'token':
      assert row.sum() == max(1, np.round(0.25 * length))
    elif mode == 'segment':
      segments = {t // 8 for t in np.flatnonzero(row)}
      assert len(segments) == max(1, np.round(0.25 * -(-length // 8)))
      for s in segments:  # every real position of a chosen segment
        assert row[s * 8:(s + 1) * 8].sum() == real[s * 8:(s + 1) * 8].sum()
    else:
      starts = max(1, np.round(0.25 * length / 3))
      runs = _runs(row)
      assert 1 <= len(runs) <= starts
      assert row.sum() <= starts * (2 * 3 - 1)


@pytest.mark.parametrize('mode', masking.MODES)
def test_a_row_without_real_tokens_chooses_nothing(mode):
  mask = jnp.zeros((2, 16), bool).at[1, :5].set(True)
  chosen = choose_positions(jax.random.split(jax.random.key(0), 2),
                                    mask, _spec(mode))
  assert not np.any(chosen[0])
  assert np.any(chosen[1]) and not np.any(chosen[1, 5:])


def test_corrupt_replaces_only_the_chosen_positions():
  tokens, mask = _batch(rows=16)
  keys = jax.random.split(jax.random.key(2), 16)
  chosen = choose_positions(keys, mask, _spec('span'))
  for mode in ('span', 'segment'):  # every chosen position: the mask token
    np.testing.assert_array_equal(
        corrupt(keys, tokens, chosen, _spec(mode)),
        np.where(chosen, MASK_ID, tokens))
  out = np.asarray(corrupt(keys, tokens, chosen, _spec('token')))
  np.testing.assert_array_equal(out[~np.asarray(chosen)],
                                np.asarray(tokens)[~np.asarray(chosen)])
  assert np.all((out >= 1) & (out <= MASK_ID) | ~np.asarray(mask))


def test_content_keys_depend_on_the_tokens_and_the_seed():
  tokens, _ = _batch(rows=6)
  tokens = tokens.at[4].set(tokens[1])  # two equal rows
  data = jax.random.key_data
  keys = np.asarray(data(masking.content_keys(tokens)))
  np.testing.assert_array_equal(keys[4], keys[1])
  assert len({tuple(k) for k in keys}) == 5
  np.testing.assert_array_equal(
      data(masking.content_keys(tokens[::-1])), keys[::-1])
  assert not np.array_equal(data(masking.content_keys(tokens, seed=1)), keys)
