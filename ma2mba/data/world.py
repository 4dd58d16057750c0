"""ShapeWorld: procedural long videos with questions only a model that watches every frame can answer.

A video is a list of *appearances*. In each, a filled coloured shape pops in at a whole second
`start`, moves in a straight line, and is gone from the whole second `end` on: it is visible at
time t iff start <= t < end. The schedule keeps the questions unambiguous at 1 FPS sampling:

- every appearance lasts >= 2 s, so 1 FPS sampling sees it at least twice;
- no two appearances start in the same second, so "first", "last" and "right after" are clear;
- at most 3 objects are visible at once, never two of the same kind (a kind is a (color, shape)
  pair), and two appearances of one kind are >= 2 s apart, so 1 FPS sampling sees the gap;
- objects that are visible together never overlap, so none hides another;
- a kind appears at most 20 times in a video.

Each video draws a few *frequent* kinds (2..20 appearances each, so counts spread over 0..20), a
few *rare* needle kinds (exactly once) and leaves the rest of the 28 kinds out. Backgrounds are
plain or noisy dark colours, changing between scenes of random length.

Geometry lives in normalised coordinates: a centre (x, y) is a fraction of the frame's width and
height, a size a fraction of its shorter side. So a video renders at any resolution and aspect
ratio with undistorted shapes, always fully inside the frame. Everything is deterministic from the
seed: only numpy's PCG64 integer and uniform draws, and geometry from + - * / and sqrt (which IEEE
rounds exactly, unlike sin or cos), so the same seed gives the same bytes on any machine.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
KINDS = tuple((color, shape) for color in COLORS for shape in SHAPES)  # 28 (color, shape) pairs

COLOR_RGB = {
    "red": (230, 25, 25),
    "green": (30, 185, 45),
    "blue": (40, 95, 255),
    "yellow": (250, 225, 30),
    "purple": (165, 45, 215),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
# Dark backgrounds, each far (> 130 in RGB distance, noise included) from every object colour.
BACKGROUND_RGB = (
    (18, 18, 18),  # black
    (50, 50, 56),  # charcoal
    (22, 28, 58),  # navy
    (62, 40, 24),  # brown
    (16, 48, 44),  # dark teal
    (45, 30, 50),  # plum
)
NOISE_AMPLITUDE = 18  # +- grey levels of a noisy background
NOISE_CELLS = 32  # the noise texture is NOISE_CELLS x NOISE_CELLS cells at every resolution

MAX_VISIBLE = 3
MIN_SHOW_S = 2  # an appearance lasts at least this long
MIN_GAP_S = 2  # seconds between two appearances of the same kind
MAX_COUNT = 20
MIN_DURATION_S = 4
SIZE_RANGE = (0.10, 0.35)  # bounding-box side, as a fraction of the frame's shorter side
CLEARANCE = 0.02  # empty space kept between objects visible together, in shorter-side units


class ShapeWorldError(ValueError):
    """Bad arguments to ShapeWorld; the message says what to change."""


def format_time(seconds: float) -> str:
    """Whole seconds as m:ss; minutes go past 59 for long videos (4504 -> '75:04')."""
    if seconds < 0:
        raise ShapeWorldError(f"Cannot format a negative time ({seconds} s).")
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def kind_name(kind: tuple[str, str]) -> str:
    return f"{kind[0]} {kind[1]}"


# ----------------------------------------------------------------------------------------------
# Shapes: unit outlines in a [-0.5, 0.5]^2 box (y points down), rasterised once per pixel size.

_SQRT5 = math.sqrt(5.0)
_COS36, _SIN36 = (1 + _SQRT5) / 4, math.sqrt(10 - 2 * _SQRT5) / 4  # exact forms: no libm sin/cos
_COS72, _SIN72 = (_SQRT5 - 1) / 4, math.sqrt(10 + 2 * _SQRT5) / 4
_H = math.sqrt(3.0) / 4  # half the height of an equilateral triangle of side 1


def _star_outline(outer=0.5, inner=0.5 * (3 - _SQRT5) / 2):
    """Regular five-pointed star, top tip up; inner radius is the pentagram's."""
    tips = [(0.0, -1.0), (_SIN72, -_COS72), (_SIN36, _COS36), (-_SIN36, _COS36), (-_SIN72, -_COS72)]
    valleys = [(_SIN36, -_COS36), (_SIN72, _COS72), (0.0, 1.0), (-_SIN72, _COS72), (-_SIN36, -_COS36)]
    points = []
    for (tx, ty), (vx, vy) in zip(tips, valleys):
        points += [(outer * tx, outer * ty), (inner * vx, inner * vy)]
    return points


OUTLINES = {
    "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "triangle": [(0.0, -_H), (0.5, _H), (-0.5, _H)],
    "star": _star_outline(),
}
# Radius of the circle around the box centre that holds the whole shape (for keeping objects apart).
EXTENT = {"circle": 0.5, **{s: max(math.hypot(x, y) for x, y in p) for s, p in OUTLINES.items()}}


# ----------------------------------------------------------------------------------------------
# The video.


@dataclass(frozen=True)
class Appearance:
    """One object becoming visible: visible iff start <= t < end; its centre moves in a straight line."""

    color: str
    shape: str
    start: int
    end: int
    size: float  # bounding-box side, fraction of the frame's shorter side
    path: tuple[float, float, float, float]  # centre (x, y) at start and (x, y) at end, fractions of W and H

    @property
    def kind(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def name(self) -> str:
        return kind_name(self.kind)

    def position(self, t: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.path
        f = (t - self.start) / (self.end - self.start)
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f


@dataclass(frozen=True)
class Scene:
    """A stretch [start, end) of the video with one background."""

    start: int
    end: int
    color: tuple[int, int, int]
    noise: int  # amplitude of the grey-level noise texture; 0 for a plain background
    noise_seed: int


@dataclass
class Video:
    """A ShapeWorld video: `appearances` sorted by start, `scenes` covering [0, duration).

    What is where: visible(t), seen(as_of), counts(as_of), running_counts(as_of), scene_at(t).
    Pixels are drawn by render.py, questions and captions written by questions.py.
    """

    seed: int
    duration: int  # seconds
    appearances: tuple[Appearance, ...]
    scenes: tuple[Scene, ...]
    frequent_kinds: tuple[tuple[str, str], ...]
    rare_kinds: tuple[tuple[str, str], ...]  # needles: each appears exactly once

    def __post_init__(self):
        self._starts = [a.start for a in self.appearances]
        self._scene_starts = [s.start for s in self.scenes]
        self._longest = max((a.end - a.start for a in self.appearances), default=1)

    # -- what is where -------------------------------------------------------------------------

    def visible(self, t: float) -> list[Appearance]:
        """Appearances visible at time t, oldest first."""
        hi = bisect.bisect_right(self._starts, t)
        lo = bisect.bisect_right(self._starts, t - self._longest, 0, hi)
        return [a for a in self.appearances[lo:hi] if t < a.end]

    def seen(self, as_of: float | None = None) -> tuple[Appearance, ...]:
        """Appearances that started by second `as_of` (all of them when None)."""
        if as_of is None:
            return self.appearances
        if as_of < 0:
            raise ShapeWorldError(f"as_of must be a time in the video (>= 0 s), got {as_of}.")
        return self.appearances[: bisect.bisect_right(self._starts, as_of)]

    def counts(self, as_of: float | None = None) -> dict[tuple[str, str], int]:
        """Appearances per kind, for all 28 kinds (zeros included)."""
        seen = Counter(a.kind for a in self.seen(as_of))
        return {kind: seen[kind] for kind in KINDS}

    def running_counts(self, as_of: float | None = None) -> list[tuple[Appearance, int]]:
        """Each appearance that started by `as_of`, with how many times its kind had appeared by then (itself included)."""
        seen = Counter()
        out = []
        for a in self.seen(as_of):
            seen[a.kind] += 1
            out.append((a, seen[a.kind]))
        return out

    def scene_at(self, t: float) -> Scene:
        return self.scenes[bisect.bisect_right(self._scene_starts, t) - 1]


# ----------------------------------------------------------------------------------------------
# Generation. Only PCG64's integers() and random() are used: their streams are stable.


def generator(seed) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _uniform(rng, lo, hi) -> float:
    return lo + (hi - lo) * float(rng.random())


def _randint(rng, lo, hi) -> int:
    """An integer in [lo, hi], both ends included."""
    return int(rng.integers(lo, hi + 1))


def shuffle(rng, items: list):
    for i in range(len(items) - 1, 0, -1):  # Fisher-Yates
        j = int(rng.integers(i + 1))
        items[i], items[j] = items[j], items[i]


def _range_arg(name, value, lo, hi):
    value = (value, value) if isinstance(value, (int, float, np.integer, np.floating)) else tuple(value)
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ShapeWorldError(f"{name} must be a number or a (low, high) pair within [{lo}, {hi}], got {value}.")
    return value


def generate(
    seed: int,
    duration_s: int = 120,
    *,
    n_frequent=(1, 5),
    n_rare=(1, 3),
    max_count: int = MAX_COUNT,
    starts_per_minute: float = 30.0,
    show_seconds=(2, 6),
    speed: float = 0.1,
    scene_seconds=(10, 60),
    noisy_fraction: float = 0.5,
) -> Video:
    """A deterministic ShapeWorld video of `duration_s` whole seconds.

    n_frequent: how many kinds appear repeatedly, (low, high) drawn per video. Each gets a target
        count drawn uniformly from 2..min(max_count, duration_s // 6); targets are scaled down
        together when they exceed `starts_per_minute`. Crowded schedules may land a little below.
    n_rare: how many needle kinds appear exactly once, (low, high).
    max_count: the most appearances of one kind (20 keeps count answers in 0..20).
    starts_per_minute: the most frequent-kind appearances per minute; long videos stay far below
        it because of max_count, so their rate per minute falls.
    show_seconds: how long an appearance lasts, whole seconds (low >= 2).
    speed: the largest movement per second along each axis, as a fraction of the frame.
    scene_seconds: scene length range; each scene has its own background.
    noisy_fraction: the share of scenes with a noisy background.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ShapeWorldError(f"seed must be a non-negative integer, got {seed!r}.")
    number = isinstance(duration_s, (int, float, np.integer, np.floating)) and not isinstance(duration_s, bool)
    if not number or not float(duration_s).is_integer() or duration_s < MIN_DURATION_S:
        raise ShapeWorldError(f"duration_s must be a whole number of seconds >= {MIN_DURATION_S}, got {duration_s}.")
    duration = int(duration_s)
    n_frequent = _range_arg("n_frequent", n_frequent, 0, len(KINDS))
    n_rare = _range_arg("n_rare", n_rare, 0, len(KINDS))
    if n_frequent[1] + n_rare[1] > len(KINDS):
        raise ShapeWorldError(f"n_frequent and n_rare together may not exceed the {len(KINDS)} kinds.")
    show = _range_arg("show_seconds", show_seconds, MIN_SHOW_S, math.inf)
    scene_len = _range_arg("scene_seconds", scene_seconds, 1, math.inf)
    if max_count < 1 or starts_per_minute <= 0 or speed < 0 or not 0 <= noisy_fraction <= 1:
        raise ShapeWorldError("max_count must be >= 1, starts_per_minute > 0, speed >= 0 and noisy_fraction in [0, 1].")

    # Independent streams, so that e.g. a scene knob does not reshuffle the objects.
    kind_rng, scene_rng, schedule_rng = (generator(s) for s in np.random.SeedSequence(int(seed)).spawn(3))

    kinds = list(KINDS)
    shuffle(kind_rng, kinds)
    nf, nr = _randint(kind_rng, *n_frequent), _randint(kind_rng, *n_rare)
    frequent, rare = kinds[:nf], kinds[nf : nf + nr]
    cap = max(1, min(max_count, duration // 6))
    targets = [_randint(kind_rng, min(2, cap), cap) for _ in frequent]
    budget = max(len(frequent), int(starts_per_minute * duration / 60))
    if sum(targets) > budget:
        targets = [max(1, c * budget // sum(targets)) for c in targets]

    appearances = _schedule(schedule_rng, duration, dict(zip(frequent, targets)), rare, show, speed)
    placed = {a.kind for a in appearances}
    return Video(
        seed=int(seed),
        duration=duration,
        appearances=tuple(sorted(appearances, key=lambda a: a.start)),
        scenes=_scenes(scene_rng, duration, scene_len, noisy_fraction),
        frequent_kinds=tuple(k for k in frequent if k in placed),
        rare_kinds=tuple(k for k in rare if k in placed),
    )


def _scenes(rng, duration, length, noisy_fraction) -> tuple[Scene, ...]:
    scenes, start, last = [], 0, None
    while start < duration:
        end = min(duration, start + _randint(rng, *length))
        color = last
        while color == last:  # the background changes at every scene cut
            color = BACKGROUND_RGB[int(rng.integers(len(BACKGROUND_RGB)))]
        noise = NOISE_AMPLITUDE if rng.random() < noisy_fraction else 0
        scenes.append(Scene(start, end, color, noise, int(rng.integers(2**32))))
        start, last = end, color
    return tuple(scenes)


def _schedule(rng, duration, targets: dict, rare: list, show, speed) -> list[Appearance]:
    """Place the needles anywhere, then each frequent kind on a jittered even grid of start seconds."""
    visible = np.zeros(duration, np.int64)  # objects visible in each second
    taken = set()  # start seconds in use
    placed = []
    last_start = duration - MIN_SHOW_S

    def place(kind, start, want):
        """Place `kind` at `start` for up to `want` seconds, if the rules allow a stay of >= MIN_SHOW_S."""
        full = np.flatnonzero(visible[start : min(duration, start + want)] >= MAX_VISIBLE)
        stay = int(full[0]) if len(full) else min(want, duration - start)  # keep <= MAX_VISIBLE on screen
        if start in taken or stay < MIN_SHOW_S:
            return None
        a = _with_path(rng, kind, start, start + stay, placed, speed)
        if a is not None:
            placed.append(a)
            taken.add(start)
            visible[start : start + stay] += 1
        return a

    # Needles first, so that crowding never pushes them out.
    for kind in rare:
        for _ in range(50):
            if place(kind, _randint(rng, 0, last_start), _randint(rng, *show)):
                break

    # Kind k with c appearances gets one start in each of c equal slots; the jitter leaves room
    # for a shortest stay and the gap before the next slot.
    plan = []  # (planned start, kind, planned start of the kind's next appearance)
    for kind, count in targets.items():
        slot = (last_start + 1) / count
        jitter = max(0.0, slot - (MIN_SHOW_S + MIN_GAP_S + 1))
        starts = [int(i * slot + float(rng.random()) * jitter) for i in range(count)] + [duration + MIN_GAP_S]
        plan += [(starts[i], kind, starts[i + 1]) for i in range(count)]
    plan.sort(key=lambda p: (p[0], KINDS.index(p[1])))
    free_at = {}  # the first second each kind may start again
    for start, kind, next_start in plan:
        # A busy second (taken, or MAX_VISIBLE on screen) delays the start by a few seconds at most.
        earliest = max(start, free_at.get(kind, 0))
        for start in range(earliest, min(earliest + 3, last_start) + 1):
            want = min(_randint(rng, *show), max(MIN_SHOW_S, next_start - MIN_GAP_S - start))
            a = place(kind, start, want)
            if a:
                free_at[kind] = a.end + MIN_GAP_S
                break
    return placed


def _with_path(rng, kind, start, end, placed, speed) -> Appearance | None:
    """An appearance with a size and a straight path that keeps clear of every object on screen with it."""
    color, shape = kind
    together = [a for a in placed if a.start < end and start < a.end]
    for attempt in range(24):
        top = SIZE_RANGE[1] - (SIZE_RANGE[1] - SIZE_RANGE[0]) * attempt / 24  # smaller as tries fail
        size = _uniform(rng, SIZE_RANGE[0], top)
        half = size / 2
        x0, y0 = _uniform(rng, half, 1 - half), _uniform(rng, half, 1 - half)
        reach = speed * (end - start)
        x1 = min(max(x0 + _uniform(rng, -reach, reach), half), 1 - half)
        y1 = min(max(y0 + _uniform(rng, -reach, reach), half), 1 - half)
        a = Appearance(color, shape, start, end, size, (x0, y0, x1, y1))
        if all(_closest_approach_sq(a, b) >= (_reach(a) + _reach(b) + CLEARANCE) ** 2 for b in together):
            return a
    return None


def _reach(a: Appearance) -> float:
    """Radius around the centre that holds the whole shape."""
    return EXTENT[a.shape] * a.size


def _closest_approach_sq(a: Appearance, b: Appearance) -> float:
    """The smallest squared distance between the centres of a and b while both are on screen.

    Exact, as the motion is linear; squared, so only + - * / decide (the same on every machine).
    """
    lo, hi = max(a.start, b.start), min(a.end, b.end)
    (ax, ay), (bx, by) = a.position(lo), b.position(lo)
    (ax1, ay1), (bx1, by1) = a.position(hi), b.position(hi)
    dx, dy = ax - bx, ay - by  # offset at lo
    vx, vy = (ax1 - bx1) - dx, (ay1 - by1) - dy  # change of the offset from lo to hi
    vv = vx * vx + vy * vy
    f = 0.0 if vv == 0 else min(1.0, max(0.0, -(dx * vx + dy * vy) / vv))
    dx, dy = dx + vx * f, dy + vy * f
    return dx * dx + dy * dy
