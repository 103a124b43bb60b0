"""Pathfinder (LRA): labels, geometry and pixels checked independently of the
generator, no pixel leak of the label, seeding, the `lra_pathfinder` build."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from simmim_jax import checks
from simmim_jax.data import pathfinder

tfds.disable_progress_bar()

SPLITS = ('train', 'validation', 'test')
PF32 = pathfinder.PathfinderSettings.for_resolution(32, 'hard')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """pf32_hard_tiny built once through TFDS (2 processes) and read back:
  (builder, split -> field -> stacked records; distractors as a list)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  builder = tfds.builder('lra_pathfinder/pf32_hard_tiny', data_dir=path,
                         num_workers=2)
  builder.download_and_prepare()
  splits = {}
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(list(range(len(source))))
    fields = {k: np.stack([r[k] for r in records])
              for k in ('image', 'label', 'markers', 'contours')}
    fields['distractors'] = [r['distractors'] for r in records]
    splits[split] = fields
  return builder, splits


def examples_of(fields):
  for i in range(len(fields['label'])):
    yield (fields['image'][i], int(fields['label'][i]), fields['markers'][i],
           fields['contours'][i], fields['distractors'][i])


def geometry_label(markers, contours):
  """1 if both markers sit on the two ends of one target, 0 if on ends of
  different targets; fails if a marker is on no end or on two."""
  owners = []
  for marker in markers:
    hits = [c for c in range(2)
            for end in (contours[c, 0, 0], contours[c, -1, 1])
            if np.linalg.norm(marker - end) < 1e-4]
    assert len(hits) == 1, (marker, hits)
    owners.append(hits[0])
  assert np.linalg.norm(markers[0] - markers[1]) > 1  # two different ends
  return int(owners[0] == owners[1])


def segment_points(dashes, num=9):
  """Points along dashes [D, 2, 2]: [D, num, 2]."""
  t = np.linspace(0, 1, num)[:, None]
  return dashes[:, None, 0] + t * (dashes[:, None, 1] - dashes[:, None, 0])


def point_segment_distance(points, dashes):
  """Distance of points [P, 2] to the nearest of dashes [D, 2, 2]: [P]."""
  a, b = dashes[None, :, 0], dashes[None, :, 1]
  ab, ap = b - a, points[:, None] - a
  t = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
  return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(1)


def check_pixels(settings, image, markers, contours, distractors):
  """The dashes and markers are drawn, and nothing else is."""
  r = settings.resolution
  assert image.shape == (r, r) and image.dtype == np.uint8
  assert image.min() == 0 and image.max() == 255
  padded = np.pad(image, 1)
  dashes = np.concatenate([contours.reshape(-1, 2, 2), distractors])
  for row, col in np.floor(dashes.mean(1)).astype(int):
    assert padded[row:row + 3, col:col + 3].max() >= 40, (row, col)
  for row, col in np.floor(markers).astype(int):
    assert image[row, col] >= 120
  lit = np.argwhere(image > 0) + 0.5
  near_dash = point_segment_distance(lit, dashes) <= (
      settings.paddle_thickness / 2 + 1)
  near_marker = np.linalg.norm(lit[:, None] - markers, axis=-1).min(1) <= (
      settings.marker_radius + 1)
  assert (near_dash | near_marker).all()


def check_geometry(settings, contours, distractors):
  """Dash lengths, joints and turns follow the settings; contours, and
  dashes of one contour two or more apart, keep clear of each other."""
  length, margins = settings.paddle_length, settings.paddle_margins
  groups = [contours[0], contours[1]] + list(
      distractors.reshape(-1, settings.distractor_length, 2, 2))
  assert len(groups) <= 2 + settings.num_distractors
  clearance = settings.paddle_thickness + 2 * min(margins) - 1e-6
  for dashes in groups:
    vectors = dashes[:, 1] - dashes[:, 0]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), length,
                               atol=1e-4)
    gaps = np.linalg.norm(dashes[1:, 0] - dashes[:-1, 1], axis=-1)
    assert (gaps <= 2 * max(margins) + 1e-4).all()
    turns = np.arccos(np.clip((vectors[1:] * vectors[:-1]).sum(-1)
                              / length ** 2, -1, 1))
    assert (turns <= np.pi / 2 / settings.continuity + 1e-3).all()
    for i in range(len(dashes) - 2):
      points = segment_points(dashes[i:i + 1]).reshape(-1, 2)
      assert point_segment_distance(points, dashes[i + 2:]).min() >= clearance
  for i, dashes in enumerate(groups):
    others = np.concatenate(groups[i + 1:] or [np.zeros((0, 2, 2))])
    if len(others):
      points = segment_points(dashes).reshape(-1, 2)
      assert point_segment_distance(points, others).min() >= clearance
  every = np.concatenate(groups).reshape(-1, 2)
  assert every.min() >= settings.padding - 1e-4
  assert every.max() <= settings.resolution - settings.padding + 1e-4


def test_labels_agree_with_the_contours(built):
  _, splits = built
  for fields in splits.values():
    for _, label, markers, contours, _ in examples_of(fields):
      assert geometry_label(markers, contours) == label


def test_stored_dashes_are_drawn_and_keep_their_rules(built):
  _, splits = built
  for image, _, markers, contours, distractors in examples_of(
      splits['validation']):
    check_pixels(PF32, image, markers, contours, distractors)
    check_geometry(PF32, contours, distractors)


@pytest.mark.parametrize('resolution,difficulty', [
    (32, 'easy'), (64, 'intermediate'), (64, 'hard'), (128, 'easy'),
    (128, 'hard')])
def test_other_resolutions(resolution, difficulty):
  settings = pathfinder.PathfinderSettings.for_resolution(resolution,
                                                          difficulty)
  rng = np.random.default_rng(resolution)
  for label in (0, 1, 1, 0):
    ex = pathfinder.draw_example(rng, settings, label)
    assert ex.contours.shape == (2, settings.contour_length, 2, 2)
    assert geometry_label(ex.markers, ex.contours) == label
    check_pixels(settings, ex.image, ex.markers, ex.contours, ex.distractors)
    check_geometry(settings, ex.contours, ex.distractors)


def test_lra_settings():
  hard = pathfinder.PathfinderSettings.for_resolution(32, 'hard')
  assert (hard.distractor_length, hard.num_distractors) == (4, 5)  # 20 // 4
  easy = pathfinder.PathfinderSettings.for_resolution(128, 'easy')
  assert (easy.contour_length, easy.distractor_length,
          easy.num_distractors, easy.paddle_margins) == (6, 2, 17, (2, 3))
  mid = pathfinder.PathfinderSettings.for_resolution(64, 'intermediate')
  assert (mid.paddle_length, mid.seed_distance, mid.num_distractors) == (
      5, 12, 7)
  with pytest.raises(checks.ConfigError, match='resolution'):
    pathfinder.PathfinderSettings.for_resolution(256)
  with pytest.raises(checks.ConfigError, match='seed_distance'):
    pathfinder.PathfinderSettings(resolution=24, seed_distance=7)


def test_classes_are_balanced(built):
  builder, splits = built
  for split, size in zip(SPLITS, builder.builder_config.num_examples):
    assert np.bincount(splits[split]['label']).tolist() == [size // 2] * 2


def ridge_accuracy(train_x, train_y, test_x, test_y, strength):
  """Held-out accuracy of ridge regression onto +-1 (closed form, dual)."""
  mean = train_x.mean(0)
  x, y = train_x - mean, 2.0 * train_y - 1
  gram = x @ x.T
  ridge = strength * np.trace(gram) / len(x)
  alpha = np.linalg.solve(gram + ridge * np.eye(len(x)), y - y.mean())
  scores = (test_x - mean) @ (x.T @ alpha) + y.mean()
  return float(np.mean((scores > 0) == test_y))


def test_linear_probe_on_pixels_is_at_chance(built):
  _, splits = built
  train = splits['train']
  held = [splits[s] for s in ('validation', 'test')]
  test_x = np.concatenate([h['image'] for h in held]).reshape(256, -1) / 255
  test_y = np.concatenate([h['label'] for h in held])
  train_x = train['image'].reshape(512, -1) / 255
  for strength in (0.01, 0.1, 1.0):
    accuracy = ridge_accuracy(train_x, train['label'], test_x, test_y,
                              strength)
    assert abs(accuracy - 0.5) < 0.1, (strength, accuracy)  # 3 sigma: .094
  # The probe does see a leak of this kind: positives 30% brighter.
  brighter = lambda x, y: x * (1 + 0.3 * y[:, None])
  leaked = ridge_accuracy(brighter(train_x, train['label']), train['label'],
                          brighter(test_x, test_y), test_y, 0.01)
  assert leaked > 0.8


def test_labels_move_only_the_second_marker():
  zero, one = (pathfinder.draw_example(np.random.default_rng(7), PF32, label)
               for label in (0, 1))
  np.testing.assert_array_equal(zero.contours, one.contours)
  np.testing.assert_array_equal(zero.distractors, one.distractors)
  np.testing.assert_array_equal(zero.markers[0], one.markers[0])
  changed = np.argwhere(zero.image != one.image) + 0.5
  assert len(changed)
  moved = np.stack([zero.markers[1], one.markers[1]])
  distance = np.linalg.norm(changed[:, None] - moved, axis=-1).min(1)
  assert (distance <= PF32.marker_radius + 1).all()


def test_seeding():
  seed = pathfinder.split_seed(0, 'test', 32, 'hard')
  first = pathfinder.draw_chunk(PF32, seed, 0, count=6)
  again = pathfinder.draw_chunk(PF32, seed, 0, count=6)
  other = pathfinder.draw_chunk(PF32, seed + 1, 0, count=6)
  for a, b, c in zip(first, again, other):
    np.testing.assert_array_equal(a.image, b.image)
    assert a.label == b.label
    assert not np.array_equal(a.image, c.image)
  # Chunks are balanced pairs; a shorter chunk is a prefix of a longer one.
  longer = pathfinder.draw_chunk(PF32, seed, 0, count=8)
  assert [e.label for e in longer[:6]] == [e.label for e in first]
  assert all(longer[i].label + longer[i + 1].label == 1 for i in (0, 2, 4))
  np.testing.assert_array_equal(longer[5].image, first[5].image)
  assert pathfinder.split_seed(0, 'train', 32, 'hard') != seed


def test_build_matches_drawing_in_this_process(built):
  """The split built by 2 processes (and shuffled by TFDS) holds what
  draw_split draws here, in one."""
  builder, splits = built
  config = builder.builder_config
  seed = pathfinder.split_seed(config.seed, 'validation', 32, 'hard')
  drawn = pathfinder.draw_split(PF32, 128, seed, num_workers=1)
  here = {e.image.tobytes(): (e.label, e.contours.tobytes()) for e in drawn}
  fields = splits['validation']
  stored = {image.tobytes(): (int(label), contours.tobytes())
            for image, label, contours in zip(
                fields['image'], fields['label'], fields['contours'])}
  assert stored == here


def test_builder_features_and_reading_back(built):
  builder, splits = built
  features = builder.info.features
  assert features['image'].shape == (32, 32)
  assert features['image'].np_dtype == np.uint8
  assert features['label'].num_classes == 2
  assert features['markers'].shape == (2, 2)
  assert features['contours'].shape == (2, 14, 2, 2)
  assert features['distractors'].shape == (None, 2, 2)
  train = builder.as_data_source(split='train')
  assert len(train) == 512
  record = train[0]
  assert record['image'].shape == (32, 32) and record['image'].size == 1024
  assert record['image'].dtype == np.uint8
  assert record['contours'].dtype == np.float32
  images = np.concatenate([splits[s]['image'] for s in SPLITS])
  assert images.min() == 0 and images.max() == 255
  # Every image is new: no duplicates within or across splits.
  assert len({i.tobytes() for i in images}) == len(images)
