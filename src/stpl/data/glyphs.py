"""Procedural digit glyphs 0-9: strokes described here, rendered with anti-aliasing.

Nothing is copied from MNIST: each digit is a few strokes (line segments, elliptic arcs and
quadratic Bezier curves) in a unit box, written for this package. :func:`render_digit`
draws one with random stroke thickness, slant, rotation, scale and per-stroke jitter, so no
two samples look the same, into a ``size x size`` image laid out like MNIST (the glyph fits
a box of about ``20/28`` of the image, centred).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["render_digit"]

Stroke = NDArray[np.float64]
"""A polyline, ``(P, 2)`` points ``(x, y)`` in the unit box, y pointing down."""


def _line(*points: tuple[float, float]) -> Stroke:
    return np.asarray(points, dtype=np.float64)


def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 24
) -> Stroke:
    """Elliptic arc from ``start`` to ``stop`` degrees (0 = right, 90 = down)."""
    a = np.deg2rad(np.linspace(start, stop, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _bezier(
    p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 16
) -> Stroke:
    s = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - s) ** 2 * a + 2 * (1 - s) * s * b + s**2 * c


def _glyph_strokes() -> tuple[tuple[Stroke, ...], ...]:
    """The ten digits as strokes in the unit box (x right, y down)."""
    return (
        # 0: an upright ellipse
        (_arc(0.5, 0.5, 0.3, 0.45, 0, 360, 40),),
        # 1: a stem with a small flag
        (_line((0.32, 0.22), (0.52, 0.05), (0.52, 0.95)),),
        # 2: top bowl, diagonal, base
        (
            np.concatenate(
                [_arc(0.5, 0.3, 0.28, 0.25, 190, 400), _line((0.18, 0.95), (0.84, 0.95))]
            ),
        ),
        # 3: two stacked bowls open to the left
        (_arc(0.5, 0.28, 0.26, 0.23, 200, 450), _arc(0.5, 0.73, 0.3, 0.22, 270, 520)),
        # 4: stem, diagonal, cross bar
        (_line((0.64, 0.95), (0.64, 0.05), (0.14, 0.66), (0.86, 0.66)),),
        # 5: top bar, short stem, bowl
        (
            np.concatenate(
                [
                    _line((0.8, 0.05), (0.3, 0.05), (0.27, 0.45)),
                    _arc(0.5, 0.68, 0.3, 0.27, 220, 520),
                ]
            ),
        ),
        # 6: a hook falling into a closed loop
        (
            _bezier((0.74, 0.05), (0.22, 0.18), (0.2, 0.7)),
            _arc(0.5, 0.7, 0.3, 0.25, 0, 360, 32),
        ),
        # 7: top bar and a long diagonal
        (_line((0.14, 0.05), (0.86, 0.05), (0.4, 0.95)),),
        # 8: two stacked loops
        (_arc(0.5, 0.27, 0.24, 0.22, 0, 360, 32), _arc(0.5, 0.72, 0.29, 0.23, 0, 360, 32)),
        # 9: a loop with a tail
        (
            _arc(0.5, 0.3, 0.28, 0.25, 0, 360, 32),
            _bezier((0.78, 0.3), (0.8, 0.72), (0.55, 0.95)),
        ),
    )


_GLYPHS = _glyph_strokes()


def _segment_distance(
    points: NDArray[np.float64], segments: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Distance of each point ``(N, 2)`` to the nearest of ``segments (K, 2, 2)`` -> ``(N,)``."""
    a = segments[None, :, 0, :]  # (1, K, 2)
    ab = segments[None, :, 1, :] - a
    ap = points[:, None, :] - a  # (N, K, 2)
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip((ap * ab).sum(-1) / denom, 0.0, 1.0)
    d = ap - t[..., None] * ab
    dist: NDArray[np.float64] = np.sqrt((d * d).sum(-1)).min(axis=1)
    return dist


def render_digit(
    digit: int,
    *,
    size: int = 28,
    rng: np.random.Generator | None = None,
    thickness: float | None = None,
) -> NDArray[np.float32]:
    """Draw digit ``digit`` (0-9) as an anti-aliased grey-level image.

    The glyph's strokes are mapped into a box of about ``size * 20 / 28`` pixels centred in
    the image (MNIST's layout) through a random affine map: scale 0.85-1.05 (x) and
    0.9-1.05 (y), slant (shear) -0.3..0.3, rotation -12..12 degrees, a shift of up to
    ``size / 28`` pixels; each stroke is also displaced by up to 3% of the box. The pen is
    round with a random width of 1.8-3.2 pixels at ``size=28`` (scaled with ``size``);
    a pixel's value is its approximate coverage, ``clip(width/2 + 0.5 - distance, 0, 1)``.

    Args:
        digit: 0 .. 9.
        size: side of the square image in pixels.
        rng: source of the random variation; ``None`` draws the canonical glyph (no
            variation, width 2.5 px at ``size=28``).
        thickness: pen width in pixels, overriding the random one.

    Returns:
        ``(size, size)`` float32 in [0, 1].

    Raises:
        ValueError: ``digit`` not in 0..9 or ``size`` < 8.
    """
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int in 0..9; got {digit!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8; got {size!r}")
    unit = size / 28.0
    box = 20.0 * unit
    strokes = [s.copy() for s in _GLYPHS[int(digit)]]
    if rng is None:
        sx = sy = 1.0
        shear = angle = 0.0
        shift = np.zeros(2)
        width = 2.5 * unit
    else:
        for s in strokes:
            s += rng.uniform(-0.03, 0.03, size=2)
        sx, sy = rng.uniform(0.85, 1.05), rng.uniform(0.9, 1.05)
        shear = rng.uniform(-0.3, 0.3)
        angle = np.deg2rad(rng.uniform(-12.0, 12.0))
        shift = rng.uniform(-unit, unit, size=2)
        width = rng.uniform(1.8, 3.2) * unit
    if thickness is not None:
        width = float(thickness)
    # unit box centred at the origin -> scale, slant (x += shear * -y: tops lean right), rotate
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    lin = rot @ np.array([[sx, -shear * sy], [0.0, sy]]) * box
    centre = np.array([size / 2.0, size / 2.0]) + shift
    segments = []
    for s in strokes:
        p = (s - 0.5) @ lin.T + centre
        segments.append(np.stack([p[:-1], p[1:]], axis=1))
    seg = np.concatenate(segments)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1).astype(np.float64)
    dist = _segment_distance(pixels, seg)
    img = np.clip(width / 2.0 + 0.5 - dist, 0.0, 1.0).reshape(size, size)
    return img.astype(np.float32)
