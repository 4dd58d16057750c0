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
import functools
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
KINDS = tuple((color, shape) for color in COLORS for shape in SHAPES)  # 28 (color, shape) pairs
QUESTION_KINDS = ("first_shape", "first_color", "last", "count", "exists", "after", "when")

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


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


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


_OUTLINES = {
    "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "triangle": [(0.0, -_H), (0.5, _H), (-0.5, _H)],
    "star": _star_outline(),
}
# Radius of the circle around the box centre that holds the whole shape (for keeping objects apart).
EXTENT = {"circle": 0.5, **{s: max(math.hypot(x, y) for x, y in p) for s, p in _OUTLINES.items()}}


def _inside_polygon(x, y, points):
    """Even-odd rule, vectorised over the arrays x, y."""
    inside = np.zeros(np.broadcast(x, y).shape, bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


@functools.lru_cache(maxsize=1024)
def shape_mask(shape: str, px: int) -> np.ndarray:
    """(px, px) bool mask of a shape whose bounding box is px pixels wide, sampled at pixel centres."""
    c = (np.arange(px) + 0.5) / px - 0.5
    y, x = c[:, None], c[None, :]
    mask = x * x + y * y <= 0.25 if shape == "circle" else _inside_polygon(x, y, _OUTLINES[shape])
    mask.setflags(write=False)
    return mask


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


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind_of_question: str  # one of QUESTION_KINDS


@dataclass
class Video:
    """A ShapeWorld video: `appearances` sorted by start, `scenes` covering [0, duration).

    What is where: visible(t), seen(as_of), counts(as_of), running_counts(as_of), scene_at(t).
    Pixels: render(t, w, h), render_many(times, w, h), frames(fps, w, h).
    Language: frame_caption(t), timed_captions(as_of), all_questions(as_of), questions(rng, n, kinds, as_of).
    """

    seed: int
    duration: int  # seconds
    appearances: tuple[Appearance, ...]
    scenes: tuple[Scene, ...]
    frequent_kinds: tuple[tuple[str, str], ...]
    rare_kinds: tuple[tuple[str, str], ...]  # needles: each appears exactly once
    _backgrounds: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

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

    # -- rendering -----------------------------------------------------------------------------

    def render(self, t: float, width: int = 64, height: int = 64) -> np.ndarray:
        """The frame at time t, (height, width, 3) uint8 RGB."""
        self._check_time(t)
        _check_size(width, height)
        frame = self._background(self.scene_at(t), width, height).copy()
        self._paint(frame, t)
        return frame

    def render_many(self, times, width: int = 64, height: int = 64) -> np.ndarray:
        """Frames at each of `times`, (N, height, width, 3) uint8."""
        times = list(times)
        _check_size(width, height)
        out = np.empty((len(times), height, width, 3), np.uint8)
        for frame, t in zip(out, times):
            self._check_time(t)
            frame[...] = self._background(self.scene_at(t), width, height)
            self._paint(frame, t)
        return out

    def frames(self, fps: float = 1.0, width: int = 64, height: int = 64, batch: int = 64):
        """Yield (t, frame) for t = k / fps over the whole video."""
        times = frame_times(self.duration, fps)
        for i in range(0, len(times), batch):
            chunk = times[i : i + batch]
            yield from zip(chunk, self.render_many(chunk, width, height))

    def _check_time(self, t):
        if not 0 <= t < self.duration:
            raise ShapeWorldError(f"Time {t} s is outside this {self.duration} s video; use 0 <= t < {self.duration}.")

    def _background(self, scene: Scene, width: int, height: int) -> np.ndarray:
        key = (scene.start, width, height)
        image = self._backgrounds.get(key)
        if image is None:
            image = np.empty((height, width, 3), np.uint8)
            image[...] = scene.color
            if scene.noise:
                # One texture per scene, stretched to the frame: the same pattern at every resolution.
                rng = np.random.Generator(np.random.PCG64(scene.noise_seed))
                cells = rng.integers(-scene.noise, scene.noise + 1, (NOISE_CELLS, NOISE_CELLS, 1))
                rows = np.arange(height) * NOISE_CELLS // height
                cols = np.arange(width) * NOISE_CELLS // width
                image = np.clip(image + cells[rows][:, cols], 0, 255).astype(np.uint8)
            self._backgrounds[key] = image
            if len(self._backgrounds) > 4:  # frames come in time order; a few scenes suffice
                self._backgrounds.popitem(last=False)
        return image

    def _paint(self, frame: np.ndarray, t: float):
        height, width = frame.shape[:2]
        short = min(width, height)
        for a in self.visible(t):
            px = max(1, int(a.size * short + 0.5))
            mask = shape_mask(a.shape, px)
            x, y = a.position(t)
            left = math.floor(x * width - px / 2 + 0.5)
            top = math.floor(y * height - px / 2 + 0.5)
            # Rounding may push the box a pixel past the edge: crop the mask to the frame.
            l, r = max(left, 0), min(left + px, width)
            u, d = max(top, 0), min(top + px, height)
            np.copyto(frame[u:d, l:r], _RGB_ARRAYS[a.color], where=mask[u - top : d - top, l - left : r - left, None])

    # -- language ------------------------------------------------------------------------------

    def frame_caption(self, t: float) -> str:
        """The objects visible at t in KINDS order, e.g. 'a red star and a blue circle', or 'nothing'."""
        names = [with_article(kind_name(k)) for k in sorted((a.kind for a in self.visible(t)), key=KINDS.index)]
        if not names:
            return "nothing"
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def timed_captions(self, as_of: float | None = None) -> list[tuple[int, str]]:
        """One (start, 'at 0:12 a green square appears') per appearance that started by `as_of`."""
        return [(a.start, f"at {format_time(a.start)} {with_article(a.name)} appears") for a in self.seen(as_of)]

    def all_questions(self, as_of: float | None = None) -> dict[str, list[QA]]:
        """Every valid question of each kind, answered as if the video ended at second `as_of`."""
        seen = self.seen(as_of)
        counts = Counter(a.kind for a in seen)
        index = {a.kind: i for i, a in enumerate(seen) if counts[a.kind] == 1}
        qs = {kind: [] for kind in QUESTION_KINDS}
        if seen:
            qs["first_shape"].append(QA("What shape appeared first?", seen[0].shape, "first_shape"))
            qs["first_color"].append(QA("What color was the first shape?", seen[0].color, "first_color"))
            qs["last"].append(QA("What was the last shape to appear?", seen[-1].name, "last"))
        for kind in KINDS:
            name = kind_name(kind)
            n = counts[kind]
            qs["count"].append(QA(f"How many times did {with_article(name)} appear?", str(n), "count"))
            qs["exists"].append(QA(f"Did {with_article(name)} appear?", "yes" if n else "no", "exists"))
            if n == 1:
                i = index[kind]
                qs["when"].append(QA(f"When did the {name} appear?", f"at {format_time(seen[i].start)}", "when"))
                if i + 1 < len(seen):
                    qs["after"].append(QA(f"What appeared right after the {name}?", seen[i + 1].name, "after"))
        return qs

    def questions(self, rng_or_seed, n: int | None = None, kinds=None, as_of: float | None = None) -> list[QA]:
        """A balanced sample of n distinct questions (default: one per question kind).

        `kinds` restricts the question kinds (names from QUESTION_KINDS). Kinds take turns in a
        random order, a kind listed twice taking two turns of each round. Within a kind, each
        distinct answer is equally likely (so 'yes' and 'no', or a count of 0 and a count of 7, come
        up equally often), then a question with that answer.
        """
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else _generator(rng_or_seed)
        kinds = QUESTION_KINDS if kinds is None else tuple(kinds)
        unknown = set(kinds) - set(QUESTION_KINDS)
        if unknown:
            raise ShapeWorldError(f"Unknown question kinds {sorted(unknown)}; choose from {QUESTION_KINDS}.")
        n = len(kinds) if n is None else n
        everything = self.all_questions(as_of)
        pools = {}  # question kind -> answer -> QAs left to draw
        for kind in kinds:
            by_answer = {}
            for qa in everything[kind]:
                by_answer.setdefault(qa.answer, []).append(qa)
            if by_answer:
                pools[kind] = by_answer
        out, turn = [], []
        while len(out) < n and pools:
            if not turn:
                turn = [k for k in kinds if k in pools]
                _shuffle(rng, turn)
            kind = turn.pop()
            if kind not in pools:
                continue
            by_answer = pools[kind]
            answer = sorted(by_answer)[int(rng.integers(len(by_answer)))]
            group = by_answer[answer]
            out.append(group.pop(int(rng.integers(len(group)))))
            if not group:
                del by_answer[answer]
                if not by_answer:
                    del pools[kind]
        return out


_RGB_ARRAYS = {name: np.array(rgb, np.uint8) for name, rgb in COLOR_RGB.items()}


def _check_size(width, height):
    whole = all(isinstance(v, (int, np.integer)) for v in (width, height))
    if not whole or width <= 0 or height <= 0:
        raise ShapeWorldError(f"Frame size must be positive whole pixels, got {width}x{height}.")


def frame_times(duration: float, fps: float) -> list[float]:
    """k / fps for every frame k with k / fps < duration."""
    rate = _rate(fps)
    n = math.ceil(duration * rate)
    return [float(k / rate) for k in range(n)]


def _rate(fps) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ShapeWorldError(f"fps must be positive, got {fps}.")
    return rate


# ----------------------------------------------------------------------------------------------
# Generation. Only PCG64's integers() and random() are used: their streams are stable.


def _generator(seed) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _uniform(rng, lo, hi) -> float:
    return lo + (hi - lo) * float(rng.random())


def _randint(rng, lo, hi) -> int:
    """An integer in [lo, hi], both ends included."""
    return int(rng.integers(lo, hi + 1))


def _shuffle(rng, items: list):
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
    kind_rng, scene_rng, schedule_rng = (_generator(s) for s in np.random.SeedSequence(int(seed)).spawn(3))

    kinds = list(KINDS)
    _shuffle(kind_rng, kinds)
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
        start = max(start, free_at.get(kind, 0))
        for start in range(start, min(start + 3, last_start) + 1):
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


# ----------------------------------------------------------------------------------------------
# Files.

_CODECS = {  # name -> (encoder, options): good quality, fast enough to write long videos
    "h264": ("libx264", {"crf": "20", "preset": "veryfast"}),
    "vp9": ("libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
}


def write_mp4(video: Video, path, fps: float = 30, width: int = 640, height: int = 360, codec: str = "h264") -> Path:
    """Encode the video as yuv420p H.264 (or VP9, e.g. into .webm); frame k of the file is render(k / fps)."""
    import av  # only needed for files

    if codec not in _CODECS:
        raise ShapeWorldError(f"Unknown codec {codec!r}; use one of {sorted(_CODECS)}.")
    _check_size(width, height)
    if width % 2 or height % 2:
        raise ShapeWorldError(f"yuv420p needs an even frame size, got {width}x{height}.")
    rate = _rate(fps)
    path = Path(path)
    encoder, options = _CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t, image in video.frames(rate, width, height):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
