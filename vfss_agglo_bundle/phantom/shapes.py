"""Plane geometry of the phantom and its outline templates, in normalised coordinates (``u`` right, ``v`` down).

Helpers build polygons ``[N, 2]`` (rotation, ellipse, Chaikin smoothing, a band around a polyline, even resampling,
quadratic Bezier curves); the templates are the canonical outlines the scene poses per study: vertebrae in
vertebra units, the mandible and the body outline in canonical-neck units.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ATLAS",
    "ATLAS_ARCH",
    "AXIS",
    "BODY",
    "MANDIBLE",
    "SKIN",
    "VERTEBRA",
    "bezier",
    "ellipse",
    "resample",
    "rotation",
    "smooth",
    "tube",
]


def rotation(angle: float) -> np.ndarray:
    """Matrix [2, 2] turning points by ``angle`` radians (from ``u`` towards ``v``)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def ellipse(centre: np.ndarray, radii: tuple[float, float], angle: float = 0.0, n: int = 24) -> np.ndarray:
    """Polygon [n, 2] approximating an ellipse."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([radii[0] * np.cos(a), radii[1] * np.sin(a)], axis=1)
    return pts @ rotation(angle).T + centre


def smooth(poly: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon [N, 2] -> [N * 2**iterations, 2]."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, axis=0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], axis=1).reshape(-1, 2)
    return poly


def tube(centreline: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Closed outline [2N, 2] of a band of varying half width [N] around a polyline [N, 2]."""
    tangent = np.gradient(centreline, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * half_width[:, None]
    return np.concatenate([centreline + normal, (centreline - normal)[::-1]])


def resample(polyline: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a polyline at even arc length. Returns points [M, 2], their arc length [M], raw arc length [N]."""
    raw = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    s = np.linspace(0.0, raw[-1], max(int(raw[-1] / step), 2) + 1)
    pts = np.stack([np.interp(s, raw, polyline[:, 0]), np.interp(s, raw, polyline[:, 1])], axis=1)
    return pts, s, raw


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic Bezier points and unit tangents at parameters f [N] (f outside [0, 1] extrapolates)."""
    f = np.asarray(f, dtype=np.float64)[:, None]
    pts = (1 - f) ** 2 * p0 + 2 * f * (1 - f) * p1 + f**2 * p2
    der = 2 * (1 - f) * (p1 - p0) + 2 * f * (p2 - p1)
    return pts, der / np.linalg.norm(der, axis=1, keepdims=True)


# Vertebra outlines in vertebra units: x from the front of the body backwards (body width 1), y down (body height 1).
VERTEBRA = np.array(
    [
        [0.00, -0.50],
        [0.95, -0.52],
        [1.05, -0.45],
        [1.15, -0.56],
        [1.45, -0.64],
        [1.65, -0.45],
        [1.85, -0.20],
        [2.40, -0.02],
        [2.60, 0.15],
        [2.45, 0.32],
        [1.90, 0.25],
        [1.70, 0.55],
        [1.40, 0.60],
        [1.15, 0.48],
        [1.00, 0.50],
        [0.00, 0.50],
        [-0.04, 0.00],
    ]
)
AXIS = np.array(  # C2: taller body with the dens pointing up, large spinous process
    [
        [0.00, -0.45],
        [0.18, -0.50],
        [0.28, -1.05],
        [0.55, -1.10],
        [0.72, -0.55],
        [1.00, -0.55],
        [1.15, -0.40],
        [1.35, -0.62],
        [1.65, -0.55],
        [1.80, -0.25],
        [2.45, -0.12],
        [2.70, 0.12],
        [2.45, 0.38],
        [1.85, 0.30],
        [1.60, 0.62],
        [1.25, 0.55],
        [1.05, 0.32],
        [1.00, 0.55],
        [0.00, 0.55],
        [-0.06, 0.05],
    ]
)
ATLAS = np.array(  # C1: small anterior arch, lateral mass, thin posterior arch with a tubercle
    [
        [-0.05, 0.00],
        [0.05, -0.32],
        [0.35, -0.42],
        [0.60, -0.55],
        [1.20, -0.50],
        [1.50, -0.28],
        [2.10, -0.25],
        [2.35, -0.45],
        [2.62, -0.32],
        [2.66, 0.10],
        [2.40, 0.35],
        [2.10, 0.20],
        [1.50, 0.25],
        [1.20, 0.48],
        [0.60, 0.48],
        [0.35, 0.38],
        [0.05, 0.32],
    ]
)
BODY = np.array([[0.05, -0.42], [0.95, -0.45], [0.95, 0.42], [0.05, 0.42]])  # vertebral body of C2..C7
ATLAS_ARCH = np.array([[0.05, -0.3], [0.35, -0.35], [0.35, 0.3], [0.05, 0.3]])  # anterior arch of C1
MANDIBLE = np.array(
    [
        [0.03, 0.575],
        [0.10, 0.555],
        [0.20, 0.545],
        [0.28, 0.525],
        [0.305, 0.44],
        [0.32, 0.31],
        [0.365, 0.36],
        [0.405, 0.255],
        [0.445, 0.285],
        [0.435, 0.40],
        [0.415, 0.50],
        [0.375, 0.56],
        [0.30, 0.605],
        [0.18, 0.665],
        [0.08, 0.71],
        [0.02, 0.70],
        [-0.015, 0.645],
    ]
)
SKIN = np.array(  # body outline, face to the left, back of the neck to the right (per-study jitter per point)
    [
        [0.82, -0.35],
        [0.81, 0.05],
        [0.85, 0.30],
        [0.93, 0.58],
        [1.00, 0.82],
        [1.05, 1.05],
        [1.09, 1.35],
        [0.44, 1.35],
        [0.38, 1.00],
        [0.33, 0.92],
        [0.25, 0.86],
        [0.11, 0.83],
        [0.03, 0.78],
        [-0.02, 0.66],
        [-0.40, 0.60],
        [-0.40, -0.35],
    ]
)
