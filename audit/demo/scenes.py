"""Procedural scenes with known ground truth: coloured shapes on textured backgrounds.

Everything is a function of a seed: the same seed gives the same pixels, boxes, masks and captions on every
machine. The words (shapes, colours, backgrounds) are single CLIP BPE tokens, so ascent can find them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
COLOURS = {
    "red": (225, 25, 30), "green": (30, 200, 70), "blue": (30, 70, 235), "yellow": (250, 225, 20),
    "orange": (250, 135, 10), "purple": (145, 40, 200), "white": (252, 252, 252), "black": (12, 12, 12),
}
BACKGROUNDS = ("grass", "water", "sand", "snow", "brick")

_SUPER = 2  # supersampling factor for smooth shape edges


@dataclass
class SceneObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    mask: np.ndarray = field(repr=False)  # [H, W] bool


@dataclass
class Scene:
    image: Image.Image
    background: str
    objects: list[SceneObject]

    def caption(self, rs: np.random.RandomState | None = None) -> str:
        return captions(self)[0] if rs is None else str(rs.choice(captions(self)))


def texture(background: str, size: int, rs: np.random.RandomState) -> np.ndarray:
    """A [size, size, 3] uint8 procedural texture; each background has its own structure, not a flat fill."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    n = rs.normal(0, 1, (size, size))
    if background == "grass":
        blades = np.repeat(rs.normal(0, 1, (1, size)), size, 0) * 0.6 + n * 0.5
        base = np.array([70, 125, 40]) + blades[..., None] * np.array([14, 22, 10])
    elif background == "water":
        ph, f = rs.uniform(0, 2 * np.pi), rs.uniform(14, 22)
        waves = np.sin(f * y + 3 * np.sin(6 * x + ph))
        base = np.array([40, 105, 170]) + waves[..., None] * np.array([10, 18, 22]) + n[..., None] * 5
    elif background == "sand":
        grain = (rs.uniform(0, 1, (size, size)) > 0.93) * -35.0
        base = np.array([214, 192, 140]) + (n * 7 + grain)[..., None]
    elif background == "snow":
        ph = rs.uniform(0, 2 * np.pi)
        drift = np.sin(5 * x + 3 * y + ph) * 6
        base = np.array([228, 234, 244]) + (drift + n * 4)[..., None] * np.array([1, 1, 0.6])
    elif background == "brick":
        rows = 6
        by = (y * rows) % 1.0
        offset = (np.floor(y * rows) % 2) * 0.5
        bx = ((x * 3 + offset) % 1.0)
        mortar = (by < 0.12) | (bx < 0.05)
        base = np.where(mortar[..., None], np.array([190, 185, 170]), np.array([150, 62, 42]))
        base = base + n[..., None] * 8
    else:
        raise ValueError(f"unknown background {background!r}")
    return np.clip(base, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + px * c - py * s, cy + px * s + py * c) for px, py in points]

    if shape == "square":
        a = r * 0.8
        return rot([(-a, -a), (a, -a), (a, a), (-a, a)])
    if shape == "triangle":
        return rot([(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "diamond":
        return rot([(0, -r), (0.55 * r, 0), (0, r), (-0.55 * r, 0)])
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t)))
        return rot(pts)
    if shape == "cross":
        a, b = r, r * 0.33
        return rot([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                    (-a, -b), (-b, -b)])
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            hx = 16 * math.sin(t) ** 3
            hy = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((hx * r / 17, hy * r / 17 + 0.1 * r))
        return rot(pts)
    raise ValueError(shape)


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage [size, size] in [0, 1] of one shape."""
    big = size * _SUPER
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)
    s = _SUPER
    if shape in ("circle", "ring"):
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
        if shape == "ring":
            ri = r * 0.55
            d.ellipse([(cx - ri) * s, (cy - ri) * s, (cx + ri) * s, (cy + ri) * s], fill=0)
    else:
        d.polygon([(px * s, py * s) for px, py in _polygon(shape, cx, cy, r, angle)], fill=255)
    return np.asarray(m.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255.0


def _place(rs, size, radii, tries=50):
    """Centres for objects of the given radii, inside the image and not overlapping."""
    for _ in range(tries):
        centres = [(rs.uniform(r, size - r), rs.uniform(r, size - r)) for r in radii]
        ok = all(math.hypot(a[0] - b[0], a[1] - b[1]) > ra + rb + 2
                 for i, (a, ra) in enumerate(zip(centres, radii, strict=True))
                 for b, rb in zip(centres[i + 1:], radii[i + 1:], strict=True))
        if ok:
            return centres
    return None


def make_scene(seed: int, size: int = 64, n_objects: int | None = None, *, shape: str | None = None,
               colour: str | None = None, background: str | None = None,
               shapes: list[str] | None = None) -> Scene:
    """One scene from a seed. Attributes left None are drawn at random; two objects never share a shape or
    a colour (so a shape word names one object) and never overlap.

    `shapes` replaces every object's shape and changes nothing else: the same seed with other shapes gives a
    minimal pair (same background, colours, places, sizes, angles), which training uses as hard negatives.
    """
    rs = np.random.RandomState(seed)
    n = n_objects if n_objects is not None else (1 if rs.rand() < 0.5 else 2)
    bg = background or BACKGROUNDS[rs.randint(len(BACKGROUNDS))]
    forced = shapes
    shapes = list(rs.choice(SHAPES, n, replace=False))
    colours = list(rs.choice(list(COLOURS), n, replace=False))
    if shape:
        shapes = [shape] + [s for s in shapes if s != shape][: n - 1]
    if colour:
        colours = [colour] + [c for c in colours if c != colour][: n - 1]
    if forced is not None:
        if len(forced) != n or len(set(forced)) != n or not set(forced) <= set(SHAPES):
            raise ValueError(f"shapes must name {n} distinct known shapes, got {forced!r}")
        shapes = list(forced)
    radii = [rs.uniform(0.2, 0.3) * size if n == 1 else rs.uniform(0.15, 0.21) * size for _ in range(n)]
    centres = _place(rs, size, radii)
    if centres is None:  # astronomically rare; a smaller pair always fits
        radii = [0.14 * size] * n
        centres = [(0.27 * size, 0.5 * size), (0.73 * size, 0.5 * size)][:n]
    img = texture(bg, size, rs).astype(np.float64)
    objects = []
    for s, c, r, (cx, cy) in zip(shapes, colours, radii, centres, strict=True):
        cov = shape_mask(s, size, cx, cy, r, rs.uniform(0, 2 * math.pi))
        img = img * (1 - cov[..., None]) + np.array(COLOURS[c])[None, None, :] * cov[..., None]
        mask = cov > 0.5
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SceneObject(str(s), str(c), box, mask))
    return Scene(Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)), bg, objects)


def captions(scene: Scene) -> list[str]:
    """Every full caption of a scene, from several templates."""
    bg = scene.background
    objs = [f"{o.colour} {o.shape}" for o in scene.objects]
    if len(objs) == 1:
        (o,) = objs
        return [f"a {o} on {bg}", f"{bg} with a {o}", f"a photo of a {o} on {bg}", f"{o} {bg}",
                f"a {o} in front of {bg}"]
    a, b = objs
    return [f"a {a} and a {b} on {bg}", f"{bg} with a {a} and a {b}", f"a {b} and a {a} on {bg}",
            f"a photo of a {a} and a {b} on {bg}", f"{a} {b} {bg}"]
