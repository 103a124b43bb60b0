"""Pathfinder images (Linsley et al. 2018; LRA's Pathfinder and Path-X) drawn
by a seeded numpy generator.

An image holds two target contours of `contour_length` dashes, shorter
distractor contours and two round markers. Label 1: the markers sit on the
two ends of one target contour; label 0: on one end of each target. As in
drewlinsley/pathfinder's snakes2.py, which LRA used:

* A contour grows dash by dash. A dash is `paddle_length` long; the joint
  after it lies `paddle_margin` beyond its end and the next dash starts
  `paddle_margin` past the joint, pointing at an angle drawn with
  probability proportional to cos^2(min(|angle change| * continuity, pi/2))
  among the directions whose dash fits: inside the padding and clear of
  every other dash. A distractor that finds none is redrawn (5 tries, then
  left out, as snakes2's `allow_incomplete`); stuck targets back up (below).
* The first target's first dash lies at least 2 * seed_distance from every
  border; the second target starts exactly seed_distance from its start, in
  a uniform direction. The two grow in turn, a dash each.
* `num_distractors` distractors of `distractor_length` dashes start
  anywhere free, after the targets.
* Markers: one on the start of a target chosen at random (contour A), the
  other on the far end of A (label 1) or of the other target (label 0). The
  label is used only there, so an image of either class is the same
  drawing with the second marker moved.
* Everything is drawn at `aa_scale` times the resolution, averaged down and
  scaled so the brightest pixel is 255 (snakes2 saved with scipy's imsave,
  which does that). Targets, distractors and markers have the intensities
  `target_contrast`, `distractor_contrast` and 1 (LRA's values).

Coordinates are (row, col) in pixels of the final image, row 0 at the top:
pixel (i, j) covers [i, i+1) x [j, j+1), its centre is (i + .5, j + .5).
An angle a points along (sin a, cos a) in (row, col).

Deviations from snakes2.py, and why:
* Dash ends are real numbers; snakes2 rounds each up (np.ceil) to a pixel,
  which drifts contours down-right by about half a pixel per dash.
* Clearance: a dash's centre line stays `paddle_thickness + 2 *
  paddle_margin` away from every other dash's (a margin-wide halo around
  each, as snakes2's dilated masks), except from the dash before it in its
  contour (tested at points half a pixel apart against that plus a
  quarter pixel, which guarantees it). snakes2 thresholds soft
  lanczos-resized masks instead, and does not test the two targets' first
  dashes against each other nor a target's newest dash against the other
  target, and leaves the first target's last dash out of the mask that
  distractors avoid. Here nothing comes closer to a target than its own
  dashes are to each other, so a label-0 image never shows a joined path.
* Stuck targets back up. snakes2 redraws both targets from new seeds
  whenever one cannot go on; with 14 dashes of 7 px from a start in the
  central 16 x 16 px of a 64 px image, about 1 try in 500 succeeds. Here
  the pair first takes back its last 1 to 3 dashes each and regrows them,
  up to 20 times, before new seeds: a try succeeds 70% of the time instead
  of 10% at pf32 hard, 35% instead of 1.8% at pf128 hard, 11% instead of
  0.2% at pf64 hard (2,000, 1,000 and 3,000 tries). It favours
  contours that turn away from an obstacle a dash or two late, a mild
  change in the shapes; both classes are drawn the same way.
* Directions: 32 evenly spaced candidates over the turns of non-zero
  weight, offset at random at each step (a near-continuous draw at every
  resolution), rather than one per pixel of the circle, deduplicated after
  rounding.
* Antialiasing: soft-edged lines and discs averaged over aa_scale x
  aa_scale blocks rather than PIL lines resized with lanczos (no ringing,
  no negative lobes; scipy.misc.imresize no longer exists). Dash ends are
  round; PIL's are flat.
* Labels are balanced exactly (draw_chunk: pairs of images, one of each
  class) instead of drawn independently per image.
* LRA ran snakes2 under Python 2, so `contour_length / 3` and
  `budget / distractor_length` were integer divisions: kept as `//`.
* No single-paddle distractors (LRA's snakes2_wrapper.py turns them off)
  and no `stop_with_availability` cut-off.
"""

import dataclasses
import math
from typing import NamedTuple, Optional

import numpy as np

from simmim_jax import checks

DIFFICULTIES = {'easy': 6, 'intermediate': 9, 'hard': 14}
RESOLUTIONS = (32, 64, 128)
# LRA's snakes2 arguments per resolution (lra_benchmarks/data/pathfinder.py).
# Target contrast = paddle contrast x snake contrast, distractors' = snake
# contrast; `budget` is the dashes shared out among distractors.
_LRA = {
    32: dict(paddle_length=2.0, paddle_thickness=0.5, paddle_margins=(1.0,),
             seed_distance=7.0, marker_radius=1.5, continuity=1.0,
             budget=20, target_contrast=1.5, distractor_contrast=2.0),
    64: dict(paddle_length=5.0, paddle_thickness=1.0, paddle_margins=(1.0,),
             seed_distance=12.0, marker_radius=2.5, continuity=1.8,
             budget=22, target_contrast=0.8, distractor_contrast=0.8),
    128: dict(paddle_length=5.0, paddle_thickness=1.5,
              paddle_margins=(2.0, 3.0), seed_distance=20.0,
              marker_radius=3.0, continuity=1.8, budget=35,
              target_contrast=0.9, distractor_contrast=0.9),
}
_CANDIDATES = 32  # directions tried per dash
_SEED_TRIES = 64  # random starts tried for a contour's first dash
_TARGET_TRIES = 500  # fresh pairs of targets before giving up
_BACKTRACKS = 20  # times a pair of targets may back up before a fresh pair
_DISTRACTOR_TRIES = 5  # snakes2's max_distractor_contour_retrial + 1
CHUNK_SIZE = 64  # images drawn from one seed; even, so classes balance


@dataclasses.dataclass(frozen=True)
class PathfinderSettings:
  """How an image is drawn; lengths in pixels of the final image."""
  resolution: int = 32
  contour_length: int = 14
  paddle_length: float = 2.0
  paddle_thickness: float = 0.5
  paddle_margins: tuple[float, ...] = (1.0,)  # one drawn per image
  padding: float = 1.0
  seed_distance: float = 7.0
  marker_radius: float = 1.5
  continuity: float = 1.0
  distractor_length: int = 4
  num_distractors: int = 5
  target_contrast: float = 1.5
  distractor_contrast: float = 2.0
  aa_scale: int = 2

  def __post_init__(self):
    for name in ('resolution', 'contour_length', 'distractor_length',
                 'aa_scale'):
      checks.integer(getattr(self, name), name)
    checks.integer(self.num_distractors, 'num_distractors', minimum=0)
    for name in ('paddle_length', 'paddle_thickness', 'seed_distance',
                 'marker_radius', 'continuity', 'target_contrast',
                 'distractor_contrast'):
      checks.number(getattr(self, name), name, low_open=True)
    checks.number(self.padding, 'padding')
    if not self.paddle_margins:
      raise checks.ConfigError('paddle_margins must name at least one margin')
    for margin in self.paddle_margins:
      checks.number(margin, 'paddle_margins', low_open=True)
    if 4 * self.seed_distance >= self.resolution:
      raise checks.ConfigError(
          f'seed_distance ({self.seed_distance}) must be under resolution / 4'
          f' ({self.resolution / 4}): the first dash lies 2 * seed_distance '
          'from every border')

  @classmethod
  def for_resolution(cls, resolution: int,
                     difficulty: str = 'hard') -> 'PathfinderSettings':
    """LRA's settings at 32, 64 or 128 (Path-X) pixels; difficulty easy,
    intermediate or hard (contours of 6, 9 or 14 dashes)."""
    if resolution not in _LRA:
      raise checks.ConfigError(
          f'resolution must be one of {RESOLUTIONS}, got {resolution!r}')
    if difficulty not in DIFFICULTIES:
      raise checks.ConfigError(f'difficulty must be one of '
                               f'{tuple(DIFFICULTIES)}, got {difficulty!r}')
    lra = dict(_LRA[resolution])
    budget = lra.pop('budget')
    length = DIFFICULTIES[difficulty]
    return cls(resolution=resolution, contour_length=length,
               distractor_length=length // 3,
               num_distractors=budget // (length // 3), **lra)


class PathfinderExample(NamedTuple):
  """One drawn image and where everything in it is, (row, col) in pixels.

  image: uint8 [resolution, resolution]. label: 1 if both markers are on
  one contour. markers: float32 [2, 2], marker 0 on contours[0, 0, 0].
  contours: float32 [2, contour_length, 2, 2]: the targets' dashes from the
  marked start on, each as (start, end); contour 0 carries marker 0,
  marker 1 is on contours[1 - label, -1, 1]. distractors: float32
  [num_dashes, 2, 2], every distractor dash.
  """
  image: np.ndarray
  label: int
  markers: np.ndarray
  contours: np.ndarray
  distractors: np.ndarray


def _distance(rows, cols, dash) -> np.ndarray:
  """Distance of the points (rows, cols) (broadcast) to the segment
  dash ((row, col), (row, col))."""
  (a0, a1), (b0, b1) = dash
  d0, d1 = b0 - a0, b1 - a1
  r, c = rows - a0, cols - a1
  t = (r * d0 + c * d1) * (1 / max(d0 * d0 + d1 * d1, 1e-12))
  t = np.minimum(np.maximum(t, 0.0), 1.0)
  return np.hypot(r - t * d0, c - t * d1)


def _dash(row: float, col: float, angle: float, start: float, stop: float):
  """The dash from `start` to `stop` pixels from (row, col) along `angle`."""
  sin, cos = math.sin(angle), math.cos(angle)
  return ((row + start * sin, col + start * cos),
          (row + stop * sin, col + stop * cos))


class _Sketch:
  """One image's dashes while its contours grow, in the order placed.

  A candidate dash must lie inside the padding and keep_out from every
  placed dash but the one before it in its contour. It is tested at points
  `slack` or less from each of its points against keep_out + slack: a dash
  that passes keeps keep_out, one that fails may be up to 2 * slack (half a
  pixel) farther. Nothing is drawn until the end.
  """

  def __init__(self, rng: np.random.Generator, s: PathfinderSettings,
               margin: float):
    self.rng, self.s, self.margin = rng, s, margin
    self.keep_out = s.paddle_thickness + 2 * margin
    size = 2 * s.contour_length + s.num_distractors * s.distractor_length
    self.ends = np.empty((size, 2, 2))  # placed dashes [count, 2, 2]
    self.middles = np.empty((size, 2))
    self.count = 0
    num = math.ceil(2 * s.paddle_length) + 1  # half a pixel apart
    self.along = np.linspace(0, 1, num)[:, None]
    self.slack = s.paddle_length / (num - 1) / 2
    self.max_turn = min(np.pi, np.pi / 2 / s.continuity)
    self.turns = np.arange(_CANDIDATES)
    self.turn_step = 2 * self.max_turn / _CANDIDATES

  def add(self, dash: np.ndarray) -> int:
    """Places dash [2, 2]; returns its number."""
    self.ends[self.count] = dash
    self.middles[self.count] = dash.mean(0)
    self.count += 1
    return self.count - 1

  def fits(self, dashes: np.ndarray, others: Optional[np.ndarray] = None
           ) -> np.ndarray:
    """Whether each of dashes [K, 2, 2] lies inside the padding and
    keep_out from `others` [S, 2, 2] (default: every placed dash): [K]."""
    s = self.s
    others = self.ends[:self.count] if others is None else others
    low, high = s.padding, s.resolution - s.padding
    ok = ((dashes >= low) & (dashes <= high)).all(axis=(1, 2))
    if not len(others):
      return ok
    points = dashes[:, None, 0] + self.along * (
        dashes[:, None, 1] - dashes[:, None, 0])  # [K, P, 2]
    a0, a1 = others[:, 0, 0], others[:, 0, 1]
    d0, d1 = others[:, 1, 0] - a0, others[:, 1, 1] - a1
    r = points[..., 0, None] - a0  # [K, P, S]
    c = points[..., 1, None] - a1
    t = (r * d0 + c * d1) * (1 / s.paddle_length ** 2)
    t = np.minimum(np.maximum(t, 0.0), 1.0)
    far = (r - t * d0) ** 2 + (c - t * d1) ** 2 >= (
        self.keep_out + self.slack) ** 2
    return ok & far.all(axis=(1, 2))

  def next_dash(self, number: int, angle: float) -> Optional[np.ndarray]:
    """A dash [2, 2] to follow the placed dash `number` (pointing at
    `angle`), drawn by snakes2's continuity rule among those that fit; None
    if none does. Its angle is arctan2 of its direction."""
    s, margin = self.s, self.margin
    # Evenly spaced over the turns of non-zero weight, |turn| < pi / 2c.
    turn = (self.turns + self.rng.random()) * self.turn_step - self.max_turn
    weight = np.cos(turn * s.continuity) ** 2
    angles = angle + turn
    joint = self.ends[number, 1] + margin * np.array(
        [math.sin(angle), math.cos(angle)])
    direction = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    dashes = joint + direction[:, None] * np.array(
        [[margin], [margin + s.paddle_length]])  # [K, 2, 2]
    # Only dashes within reach of a candidate need testing.
    reach = margin + 1.5 * s.paddle_length + self.keep_out + self.slack
    near = np.abs(self.middles[:self.count] - joint).max(axis=1) <= reach
    near[number] = False
    total = np.cumsum(weight * self.fits(dashes, self.ends[:self.count][near]))
    if total[-1] <= 0:
      return None
    pick = np.searchsorted(total, self.rng.random() * total[-1], side='right')
    return dashes[min(pick, len(dashes) - 1)]

  def _start(self, tail, angle: float) -> np.ndarray:
    """The dash [2, 2] from `tail` [2] along `angle`."""
    head = tail + self.s.paddle_length * np.array(
        [math.sin(angle), math.cos(angle)])
    return np.stack([tail, head])

  def _target_starts(self) -> bool:
    """Places the two targets' first dashes (numbers 0 and 1)."""
    s, rng = self.s, self.rng
    low, high = 2 * s.seed_distance, s.resolution - 2 * s.seed_distance
    for _ in range(_SEED_TRIES):
      first = self._start(rng.uniform(low, high, 2), rng.uniform(-np.pi, np.pi))
      if not ((first >= low) & (first <= high)).all():
        continue  # the whole first dash lies 2 * seed_distance inside
      away, angle = rng.uniform(-np.pi, np.pi, 2)
      tail = first[0] + s.seed_distance * np.array(
          [math.sin(away), math.cos(away)])
      second = self._start(tail, angle)
      if (self.fits(first[None], self.ends[:0])[0]
          and self.fits(second[None], first[None])[0]):
        self.add(first)
        self.add(second)
        return True
    return False

  def targets(self, backtracks: int) -> Optional[np.ndarray]:
    """The two targets' dashes [2, contour_length, 2, 2], grown in turn, or
    None when they get stuck more than `backtracks` times. A stuck pair
    takes back the last 2, 4 or 6 dashes grown (both targets') and grows on
    from there."""
    if not self._target_starts():
      return None
    step, steps = 0, 2 * (self.s.contour_length - 1)
    while step < steps:
      number = self.count - 2  # the same target's newest dash
      vector = self.ends[number, 1] - self.ends[number, 0]
      dash = self.next_dash(number, math.atan2(*vector))
      if dash is not None:
        self.add(dash)
        step += 1
        continue
      if backtracks == 0:
        return None
      backtracks -= 1
      back = min(step, 2 * int(self.rng.integers(1, 4)))
      self.count -= back
      step -= back
    # Dashes alternate between the targets: 0, 1, 0, 1, ...
    return self.ends[:self.count].reshape(-1, 2, 2, 2).transpose(1, 0, 2, 3)

  def _free_start(self) -> Optional[np.ndarray]:
    """A first dash [2, 2] uniform among those that fit (of _SEED_TRIES
    random ones, tried a batch at a time), or None."""
    s, batch = self.s, 8
    for _ in range(_SEED_TRIES // batch):
      tails = self.rng.uniform(s.padding, s.resolution - s.padding,
                               (batch, 2))
      angles = self.rng.uniform(-np.pi, np.pi, batch)
      heads = tails + s.paddle_length * np.stack(
          [np.sin(angles), np.cos(angles)], axis=1)
      starts = np.stack([tails, heads], axis=1)
      free = np.flatnonzero(self.fits(starts))
      if free.size:
        return starts[free[0]]
    return None

  def distractor(self) -> None:
    """Places one more distractor, unless none fits in _DISTRACTOR_TRIES
    tries."""
    s = self.s
    for _ in range(_DISTRACTOR_TRIES):
      start = self._free_start()
      if start is None:
        continue
      first = self.add(start)
      angle = math.atan2(*(start[1] - start[0]))
      while self.count - first < s.distractor_length:
        dash = self.next_dash(self.count - 1, angle)
        if dash is None:
          break
        self.add(dash)
        angle = math.atan2(*(dash[1] - dash[0]))
      if self.count - first == s.distractor_length:
        return
      self.count = first


def _paint_dash(canvas: np.ndarray, dash, width: float, value: float):
  """Max-blends onto canvas a soft line of `width` along `dash` (both in
  canvas cells)."""
  (a0, a1), (b0, b1) = dash
  size, reach = canvas.shape[0], width / 2 + 1
  r0, c0 = (max(0, int(min(a, b) - reach)) for a, b in ((a0, b0), (a1, b1)))
  r1, c1 = (min(size, int(max(a, b) + reach) + 1)
            for a, b in ((a0, b0), (a1, b1)))
  rows = np.arange(r0, r1)[:, None] + 0.5
  cols = np.arange(c0, c1) + 0.5
  ink = width / 2 + 0.5 - _distance(rows, cols, dash)
  view = canvas[r0:r1, c0:c1]
  np.maximum(view, value * np.minimum(np.maximum(ink, 0), 1), out=view)


def render(s: PathfinderSettings, contours: np.ndarray,
           distractors: np.ndarray, markers: np.ndarray) -> np.ndarray:
  """The image uint8 [resolution, resolution] of contours [C, n, 2, 2],
  distractors [D, 2, 2] and markers [M, 2] (pixels of the final image)."""
  scale = s.aa_scale
  canvas = np.zeros((s.resolution * scale,) * 2, np.float32)
  width = s.paddle_thickness * scale
  for dashes, value in ((contours.reshape(-1, 2, 2), s.target_contrast),
                        (distractors, s.distractor_contrast)):
    for dash in (np.asarray(dashes, np.float64) * scale).tolist():
      _paint_dash(canvas, dash, width, value)
  for centre in (np.asarray(markers, np.float64) * scale).tolist():
    # A disc is a line from its centre to itself.
    _paint_dash(canvas, (centre, centre), 2 * s.marker_radius * scale, 1.0)
  image = canvas.reshape(s.resolution, scale, s.resolution, scale).mean(
      axis=(1, 3))
  return np.round(image * (255 / image.max())).astype(np.uint8)


def draw_contours(rng: np.random.Generator, s: PathfinderSettings):
  """Targets [2, contour_length, 2, 2] and distractors [D, 2, 2] (float64),
  the targets in random order; raises RuntimeError if the settings leave no
  room for the targets."""
  margin = s.paddle_margins[rng.integers(len(s.paddle_margins))]
  for _ in range(_TARGET_TRIES):
    sketch = _Sketch(rng, s, margin)
    targets = sketch.targets(_BACKTRACKS)
    if targets is not None:
      break
  else:
    raise RuntimeError(f'no two targets fit in {_TARGET_TRIES} tries: {s}')
  for _ in range(s.num_distractors):
    sketch.distractor()
  distractors = sketch.ends[2 * s.contour_length:sketch.count].copy()
  targets = targets.copy()
  if rng.integers(2):
    targets = targets[::-1]
  return targets, distractors


def draw_example(rng: np.random.Generator, s: PathfinderSettings,
                 label: int) -> PathfinderExample:
  """One image of class `label` (0 or 1); see PathfinderExample. The label
  draws nothing from `rng`: both labels give the same contours."""
  if label not in (0, 1):
    raise ValueError(f'label must be 0 or 1, got {label!r}')
  contours, distractors = draw_contours(rng, s)
  markers = np.stack([contours[0, 0, 0], contours[1 - label, -1, 1]])
  image = render(s, contours, distractors, markers)
  return PathfinderExample(image, int(label), markers.astype(np.float32),
                           contours.astype(np.float32),
                           distractors.astype(np.float32))


def draw_chunk(settings: PathfinderSettings, seed: int, chunk: int,
               count: int = CHUNK_SIZE) -> list[PathfinderExample]:
  """The first `count` images of chunk `chunk` of the split seeded `seed`,
  from a generator seeded by (seed, chunk). Labels come in pairs (0, 1) or
  (1, 0); the first images of a chunk do not depend on `count`."""
  rng = np.random.default_rng([seed, chunk])
  first = rng.integers(2, size=CHUNK_SIZE // 2)
  labels = np.stack([first, 1 - first], axis=1).reshape(-1)
  return [draw_example(rng, settings, int(label))
          for label in labels[:count]]


def draw_task(task: tuple) -> list[PathfinderExample]:
  """draw_chunk(*task), for a process pool."""
  return draw_chunk(*task)
