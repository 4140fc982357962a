"""Camera models: pinhole with Brown-Conrady distortion, MEI unified, WoodScape radial polynomial, Kannala-Brandt.

Every model is a frozen dataclass implementing :class:`~perception.geometry.camera_base.CameraModel`:

* ``project(points_cam [..., 3]) -> (uv [..., 2], valid [...])``
* ``unproject(uv [..., 2]) -> (rays [..., 3] unit norm, valid [...])``

Camera frame: OpenCV (x right, y down, z forward). Pixels: OpenCV, the centre of the top-left
pixel is (0, 0). One vectorised implementation serves numpy arrays and torch tensors (float32 or
float64; the result keeps the input's type, dtype and device; integer input is computed in
float64); ``project`` is differentiable under torch autograd. ``uv`` and ``rays`` are finite
everywhere (zeros / the optical axis where the input was not finite); ``valid`` says where they
mean something. ``valid`` is false for non-finite input, outside the model's field of view
(including beyond the radius where its distortion folds back, see below) and outside the image.

Sources of the models:

* :class:`PinholeCamera` -- OpenCV's radial-tangential ("Brown-Conrady", plumb bob) model,
  coefficients ``(k1, k2, p1, p2, k3)`` in OpenCV's order (the order of KITTI-360's ``D_00``); see the
  OpenCV documentation of ``calib3d`` ("Camera Calibration and 3D Reconstruction", the distortion
  equations above ``cv::projectPoints``) and D. C. Brown, "Decentering distortion of lenses",
  Photogrammetric Engineering 32(3), 1966.
* :class:`MEICamera` -- the unified omnidirectional model with radial-tangential distortion of
  C. Mei and P. Rives, "Single View Point Omnidirectional Camera Calibration from Planar Grids",
  ICRA 2007, in the parameterisation and YAML format (``model_type: MEI``, ``xi``, ``k1 k2 p1 p2``,
  ``gamma1 gamma2 u0 v0``) that KITTI-360 ships for its side fisheyes (Liao, Xie, Geiger,
  "KITTI-360", TPAMI 2022).
* :class:`RadialPolyFisheye` -- WoodScape's ``radial_poly`` model, S. Yogamani et al.,
  "WoodScape: A multi-task, multi-camera fisheye dataset for autonomous driving", ICCV 2019, as
  specified in the dataset's ``scripts/calibration/calibration_readme.txt`` and ``projection.py``.
* :class:`KannalaBrandtCamera` -- J. Kannala and S. S. Brandt, "A Generic Camera Model and
  Calibration Method for Conventional, Wide-Angle, and Fish-Eye Lenses", TPAMI 28(8), 2006, in the
  four-coefficient form of OpenCV's ``cv::fisheye`` module.

Convention decisions (see each class for details):

* Field-of-view limits. Each distortion is only invertible while the distorted radius grows with
  the undistorted radius / incidence angle. The first turning point is computed once at
  construction (``max_undistorted_radius`` for pinhole and MEI, ``theta_max`` for the fisheyes,
  the latter capped at pi); points beyond it are not valid, because their pixels alias pixels of
  points inside it. For MEI with ``xi > 1`` the sphere-to-plane mapping itself folds where
  ``1 + xi * z_s = 0`` (incidence angle ``acos(-1/xi)``, 116.8 deg for KITTI-360's image_02).
* WoodScape: principal point ``(W/2 - 0.5 + cx_offset, H/2 - 0.5 + cy_offset)`` and ``aspect_ratio``
  multiplying the *v* offset only, exactly as WoodScape's ``projection.py``. Its extrinsic
  quaternion is **scalar-last** ``[x, y, z, w]`` (the dataset's code calls
  ``scipy.spatial.transform.Rotation.from_quat`` on it, and its readme says so), mapping the OpenCV
  camera frame to the ISO 8855 vehicle frame (x forward, y left, z up, origin on the ground below
  the rear axle); see :func:`woodscape_extrinsic`.
* KITTI-360's own python helper (``kitti360scripts/helpers/project.py``) drops ``p1, p2`` when it
  projects with the MEI model; we apply them, as the MEI model and its calibration toolbox do. For
  image_02 the two differ by up to 0.5 px inside the valid image.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from perception.geometry._array import Array, is_torch, xp
from perception.geometry.camera_base import CameraModel

__all__ = [
    "PinholeCamera",
    "MEICamera",
    "RadialPolyFisheye",
    "KannalaBrandtCamera",
    "ResizedCamera",
    "woodscape_extrinsic",
]

# Points need z (pinhole) or z_s + xi (MEI) above this to be in front of the camera.
_EPS = 1e-9
# Guard for divisions by Jacobians / derivatives (representable in float32).
_TINY = 1e-30
_MAX_ITER = 30


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_input(a: Any, n: int, where: str):
    """Validate ``a [..., n]`` and return ``(namespace, float array)``."""
    if not is_torch(a):
        a = np.asarray(a)
    shape = tuple(a.shape)
    if len(shape) == 0 or shape[-1] != n:
        raise ValueError(f"{where}: expected an array of shape [..., {n}], got shape {shape}")
    x = xp(a)
    return x, x.as_float(a)


def _tolerances(x, a) -> tuple[float, float]:
    """``(step tolerance of the Newton iterations, accepted residual in pixels)`` for ``a``'s dtype."""
    if x.eps(a) < 1e-10:  # float64
        return 1e-14, 1e-6
    return 1e-6, 2e-2  # float32 / float16: a pixel coordinate near 1000 has ~1e-4 px resolution


def _split_points(x, p):
    """``p [..., 3]`` → ``X, Y, Z, ok``; points that are non-finite or zero are replaced by (0, 0, 1)."""
    X, Y, Z = p[..., 0], p[..., 1], p[..., 2]
    ok = x.logical_and(x.logical_and(x.isfinite(X), x.isfinite(Y)), x.isfinite(Z))
    ok = x.logical_and(ok, (X * X + Y * Y + Z * Z) > 0)
    return x.where(ok, X, 0.0), x.where(ok, Y, 0.0), x.where(ok, Z, 1.0), ok


def _split_pixels(x, uv):
    """``uv [..., 2]`` → ``u, v, finite``; non-finite pixels are replaced by (0, 0)."""
    u, v = uv[..., 0], uv[..., 1]
    ok = x.logical_and(x.isfinite(u), x.isfinite(v))
    return x.where(ok, u, 0.0), x.where(ok, v, 0.0), ok


def _safe_sqrt(x, r2):
    """``sqrt(r2)`` with a finite gradient at 0 (torch)."""
    pos = r2 > 0
    return x.where(pos, x.sqrt(x.where(pos, r2, 1.0)), 0.0)


def _theta_over_r(x, X, Y, Z):
    """Incidence angle ``theta = atan2(r_xy, z)`` and ``theta / r_xy`` (its limit ``1/z`` on the axis)."""
    r2 = X * X + Y * Y
    r = _safe_sqrt(x, r2)
    theta = x.atan2(r, Z)
    pos = r2 > 0
    t_over_r = x.where(pos, theta / x.where(pos, r, 1.0), 1.0 / x.where(Z > 0, Z, 1.0))
    return theta, t_over_r


def _finish_projection(cam: CameraModel, x, u, v, valid):
    ok = x.logical_and(x.isfinite(u), x.isfinite(v))
    uv = x.stack([x.where(ok, u, 0.0), x.where(ok, v, 0.0)], axis=-1)
    return uv, x.logical_and(x.logical_and(valid, ok), cam.in_image(uv))


def _unit_rays(x, rx, ry, rz, valid):
    """Normalize ``(rx, ry, rz)`` to ``rays [..., 3]``; degenerate ones become (0, 0, 1) and invalid."""
    n = x.sqrt(rx * rx + ry * ry + rz * rz)
    good = x.logical_and(x.isfinite(n), n > 0)
    n = x.where(good, n, 1.0)
    rays = x.stack([x.where(good, rx / n, 0.0), x.where(good, ry / n, 0.0), x.where(good, rz / n, 1.0)], axis=-1)
    return rays, x.logical_and(valid, good)


def _first_positive_root(coeffs_low_to_high, cap: float) -> float:
    """Smallest positive real root of ``sum c_i t^i`` (``cap`` if none is below it)."""
    c = np.trim_zeros(np.asarray(coeffs_low_to_high, dtype=np.float64)[::-1], "f")
    if c.size <= 1:
        return cap
    roots = np.roots(c)
    real = roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots))].real
    real = real[real > 0]
    return float(min(cap, real.min())) if real.size else cap


def _radtan(x_, y_, k1, k2, k3, p1, p2):
    """OpenCV radial-tangential distortion of normalized coordinates ``x_, y_`` → ``xd, yd``."""
    s = x_ * x_ + y_ * y_
    f = 1.0 + s * (k1 + s * (k2 + s * k3))
    xy = x_ * y_
    return x_ * f + 2.0 * p1 * xy + p2 * (s + 2.0 * x_ * x_), y_ * f + p1 * (s + 2.0 * y_ * y_) + 2.0 * p2 * xy


def _radtan_jacobian(x_, y_, k1, k2, k3, p1, p2):
    """``d(xd, yd)/d(x, y)`` as ``(a, b, c, d)`` = ``[[dxd/dx, dxd/dy], [dyd/dx, dyd/dy]]``."""
    s = x_ * x_ + y_ * y_
    f = 1.0 + s * (k1 + s * (k2 + s * k3))
    fp = k1 + s * (2.0 * k2 + 3.0 * k3 * s)
    off = 2.0 * x_ * y_ * fp + 2.0 * p1 * x_ + 2.0 * p2 * y_
    a = f + 2.0 * x_ * x_ * fp + 2.0 * p1 * y_ + 6.0 * p2 * x_
    d = f + 2.0 * y_ * y_ * fp + 6.0 * p1 * y_ + 2.0 * p2 * x_
    return a, off, off, d


def _clamp_radius(x, px, py, r_max: float):
    if math.isinf(r_max):
        return px, py
    r = _safe_sqrt(x, px * px + py * py)
    scale = x.where(r > r_max, r_max / x.where(r > r_max, r, 1.0), 1.0)
    return px * scale, py * scale


def _radtan_undistort(x, xd, yd, coeffs, r_max: float, step_tol: float):
    """Solve ``radtan(x, y) = (xd, yd)`` by Newton on the 2x2 Jacobian, staying inside ``r < r_max``.

    Returns ``x, y, residual`` (the distance, in normalized units, left between the distortion of
    the solution and ``(xd, yd)``; large where no undistorted point within ``r_max`` exists).
    """
    if not any(coeffs):
        return xd, yd, x.zeros_like(xd)
    ux, uy = _clamp_radius(x, xd, yd, r_max)
    for _ in range(_MAX_ITER):
        ex, ey = _radtan(ux, uy, *coeffs)
        ex, ey = ex - xd, ey - yd
        a, b, c, d = _radtan_jacobian(ux, uy, *coeffs)
        det = a * d - b * c
        det = x.where(x.abs(det) > _TINY, det, _TINY)
        nx, ny = _clamp_radius(x, ux - (d * ex - b * ey) / det, uy - (a * ey - c * ex) / det, r_max)
        step = max(x.max_abs(nx - ux), x.max_abs(ny - uy))
        ux, uy = nx, ny
        if not step > step_tol:  # also stops on nan (cannot happen: inputs are sanitized)
            break
    ex, ey = _radtan(ux, uy, *coeffs)
    ex, ey = ex - xd, ey - yd
    return ux, uy, x.sqrt(ex * ex + ey * ey)


def _invert_monotonic(x, target, fn: Callable, theta_max: float, slope0: float, step_tol: float):
    """Solve ``g(theta) = target`` on ``[0, theta_max]`` where ``g`` increases (Newton with bisection fallback).

    ``fn(theta) -> (g, dg/dtheta)``. Returns ``theta, |g(theta) - target|``.
    """
    lo = x.zeros_like(target)
    hi = x.full_like(target, theta_max)
    th = x.clip(target / slope0, 0.0, theta_max)
    for _ in range(_MAX_ITER):
        g, dg = fn(th)
        e = g - target
        lo = x.where(e <= 0, th, lo)
        hi = x.where(e >= 0, th, hi)
        nt = th - e / x.where(dg > _TINY, dg, _TINY)
        out = x.logical_or(x.logical_or(nt < lo, nt > hi), x.logical_not(x.isfinite(nt)))
        nt = x.where(out, 0.5 * (lo + hi), nt)
        step = x.max_abs(nt - th)
        th = nt
        if not step > step_tol:
            break
    g, _ = fn(th)
    return th, x.abs(g - target)


def _as_float_fields(obj, names) -> None:
    for name in names:
        val = float(getattr(obj, name))
        if not math.isfinite(val):
            raise ValueError(f"{type(obj).__name__}: {name} must be finite, got {val}")
        object.__setattr__(obj, name, val)


def _as_int_size(obj) -> None:
    for name in ("width", "height"):
        val = getattr(obj, name)
        if float(val) != int(float(val)):
            raise ValueError(f"{type(obj).__name__}: {name} must be an integer, got {val}")
        object.__setattr__(obj, name, int(float(val)))


def _float_field_names(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.name not in ("width", "height")]


# --------------------------------------------------------------------------------------------
# pinhole + Brown-Conrady
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinholeCamera(CameraModel):
    """Pinhole camera with OpenCV radial-tangential distortion (no skew).

    ``x = X/Z, y = Y/Z``, ``r^2 = x^2 + y^2``,
    ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2)``,
    ``y_d = y (1 + k1 r^2 + k2 r^4 + k3 r^6) + p1 (r^2 + 2 y^2) + 2 p2 x y``,
    ``u = fx x_d + cx``, ``v = fy y_d + cy`` -- identical to ``cv2.projectPoints`` with
    ``distCoeffs = (k1, k2, p1, p2, k3)``.

    A point is valid when ``Z > 1e-9``, its undistorted radius is below ``max_undistorted_radius``
    (the first radius where ``d r_d / d r = 0``, tangential terms ignored; infinite when the radial
    polynomial never turns) and its pixel is in the image.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0

    def __post_init__(self) -> None:
        _as_int_size(self)
        super().__post_init__()
        _as_float_fields(self, _float_field_names(type(self)))
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"PinholeCamera: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        r_max = _first_positive_root([1.0, 0.0, 3 * self.k1, 0.0, 5 * self.k2, 0.0, 7 * self.k3], math.inf)
        object.__setattr__(self, "max_undistorted_radius", r_max)

    @property
    def dist(self) -> tuple[float, float, float, float, float]:
        """Distortion coefficients in OpenCV order ``(k1, k2, p1, p2, k3)``."""
        return (self.k1, self.k2, self.p1, self.p2, self.k3)

    @property
    def _coeffs(self):
        return (self.k1, self.k2, self.k3, self.p1, self.p2)

    @property
    def K(self) -> np.ndarray:
        """The ``[3, 3]`` float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_matrix(cls, K, width: int, height: int, dist=None) -> "PinholeCamera":
        """From an intrinsic matrix ``K [3, 3]`` and OpenCV ``dist`` ``(k1, k2, p1, p2[, k3[, ...]])``.

        ``K[2, 2]`` is not checked (KITTI-360's ``perspective.txt`` stores 0 there). Skew and
        coefficients beyond ``k3`` (rational / thin-prism / tilt models) are not supported and
        raise ``ValueError`` when non-zero.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"PinholeCamera.from_matrix: K must have shape (3, 3), got {K.shape}")
        if K[0, 1] != 0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0:
            raise ValueError(f"PinholeCamera.from_matrix: skew / non-upper-triangular K is not supported:\n{K}")
        d = np.zeros(5)
        if dist is not None:
            dist = np.asarray(dist, dtype=np.float64).ravel()
            if dist.size < 4:
                raise ValueError(f"PinholeCamera.from_matrix: dist needs at least (k1, k2, p1, p2), got {dist.size} values")
            if dist.size > 5 and np.any(dist[5:] != 0):
                raise ValueError("PinholeCamera.from_matrix: distortion terms beyond k3 are not supported")
            d[: min(5, dist.size)] = dist[:5]
        return cls(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], d[0], d[1], d[2], d[3], d[4])

    def project(self, points_cam: Array) -> tuple[Array, Array]:
        """``points_cam [..., 3]`` → ``uv [..., 2]``, ``valid [...]``."""
        x, p = _as_input(points_cam, 3, "PinholeCamera.project")
        X, Y, Z, ok = _split_points(x, p)
        front = Z > _EPS
        zs = x.where(front, Z, 1.0)
        mx, my = X / zs, Y / zs
        valid = x.logical_and(ok, front)
        valid = x.logical_and(valid, (mx * mx + my * my) < self.max_undistorted_radius**2)
        xd, yd = _radtan(mx, my, *self._coeffs)
        return _finish_projection(self, x, self.fx * xd + self.cx, self.fy * yd + self.cy, valid)

    def unproject(self, uv: Array) -> tuple[Array, Array]:
        """``uv [..., 2]`` → unit ``rays [..., 3]``, ``valid [...]`` (Newton-inverted distortion)."""
        x, q = _as_input(uv, 2, "PinholeCamera.unproject")
        step_tol, res_px = _tolerances(x, q)
        u, v, ok = _split_pixels(x, q)
        xd, yd = (u - self.cx) / self.fx, (v - self.cy) / self.fy
        mx, my, res = _radtan_undistort(x, xd, yd, self._coeffs, self.max_undistorted_radius, step_tol)
        valid = x.logical_and(ok, self.in_image(q))
        valid = x.logical_and(valid, res * max(self.fx, self.fy) < res_px)
        valid = x.logical_and(valid, (mx * mx + my * my) < self.max_undistorted_radius**2)
        return _unit_rays(x, mx, my, x.ones_like(mx), valid)


# --------------------------------------------------------------------------------------------
# MEI unified model
# --------------------------------------------------------------------------------------------


def _read_opencv_yaml(path) -> dict:
    """Read an OpenCV-written YAML file (``%YAML:1.0`` header, optional ``---``)."""
    import yaml

    lines = Path(path).read_text().splitlines()
    body = "\n".join(line for line in lines if not line.lstrip().startswith("%YAML"))
    # OpenCV's ``!!opencv-matrix`` tags are not used by the camera files read here; drop any tag.
    body = body.replace("!!opencv-matrix", "")
    data = yaml.safe_load(body)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


@dataclass(frozen=True)
class MEICamera(CameraModel):
    """Mei & Rives unified omnidirectional model with radial-tangential distortion (KITTI-360 fisheyes).

    ``X_s = X / |X|``; ``m = (X_s.x, X_s.y) / (X_s.z + xi)``; ``m_d = radtan(m; k1, k2, p1, p2)`` (OpenCV
    equations, no ``k3``); ``u = gamma1 m_d.x + u0``, ``v = gamma2 m_d.y + v0``.

    Valid where ``X_s.z + xi > 1e-9``, where the sphere-to-plane map still increases
    (``1 + xi X_s.z > 1e-9``: for ``xi > 1`` it folds at the incidence angle ``acos(-1/xi)``), where
    ``|m| < max_undistorted_radius`` (the smaller of ``1/sqrt(xi^2 - 1)`` and the first turning
    point of the radial distortion) and where the pixel is in the image. ``unproject`` undistorts by
    Newton and lifts to the sphere in closed form:
    ``lambda = (xi + sqrt(1 + (1 - xi^2) |m|^2)) / (1 + |m|^2)``, ``X_s = (lambda m, lambda - xi)``.
    """

    xi: float
    k1: float
    k2: float
    p1: float
    p2: float
    gamma1: float
    gamma2: float
    u0: float
    v0: float

    def __post_init__(self) -> None:
        _as_int_size(self)
        super().__post_init__()
        _as_float_fields(self, _float_field_names(type(self)))
        if self.xi < 0:
            raise ValueError(f"MEICamera: xi must be >= 0, got {self.xi}")
        if self.gamma1 <= 0 or self.gamma2 <= 0:
            raise ValueError(f"MEICamera: gamma1/gamma2 must be positive, got {self.gamma1}, {self.gamma2}")
        sphere = 1.0 / math.sqrt(self.xi**2 - 1.0) if self.xi > 1.0 else math.inf
        r_max = _first_positive_root([1.0, 0.0, 3 * self.k1, 0.0, 5 * self.k2], sphere)
        object.__setattr__(self, "max_undistorted_radius", r_max)

    @property
    def _coeffs(self):
        return (self.k1, self.k2, 0.0, self.p1, self.p2)

    @classmethod
    def from_kitti360_yaml(cls, path) -> "MEICamera":
        """From a KITTI-360 fisheye calibration (``calibration/image_02.yaml`` / ``image_03.yaml``)."""
        d = _read_opencv_yaml(path)
        if str(d.get("model_type", "MEI")).upper() != "MEI":
            raise ValueError(f"{path}: model_type is {d.get('model_type')!r}, expected 'MEI'")
        try:
            m, dist, proj = d["mirror_parameters"], d["distortion_parameters"], d["projection_parameters"]
            return cls(
                int(d["image_width"]), int(d["image_height"]), m["xi"],
                dist["k1"], dist["k2"], dist["p1"], dist["p2"],
                proj["gamma1"], proj["gamma2"], proj["u0"], proj["v0"],
            )  # fmt: skip
        except KeyError as e:
            raise ValueError(f"{path}: missing MEI calibration entry {e}") from None

    def _fov_valid(self, x, xs, ys, zs):
        den = zs + self.xi
        valid = x.logical_and(den > _EPS, 1.0 + self.xi * zs > _EPS)
        return valid, x.where(den > _EPS, den, 1.0)

    def project(self, points_cam: Array) -> tuple[Array, Array]:
        """``points_cam [..., 3]`` → ``uv [..., 2]``, ``valid [...]``."""
        x, p = _as_input(points_cam, 3, "MEICamera.project")
        X, Y, Z, ok = _split_points(x, p)
        n = x.sqrt(X * X + Y * Y + Z * Z)
        xs, ys, zs = X / n, Y / n, Z / n
        fov, den = self._fov_valid(x, xs, ys, zs)
        mx, my = xs / den, ys / den
        valid = x.logical_and(x.logical_and(ok, fov), (mx * mx + my * my) < self.max_undistorted_radius**2)
        xd, yd = _radtan(mx, my, *self._coeffs)
        return _finish_projection(self, x, self.gamma1 * xd + self.u0, self.gamma2 * yd + self.v0, valid)

    def unproject(self, uv: Array) -> tuple[Array, Array]:
        """``uv [..., 2]`` → unit ``rays [..., 3]``, ``valid [...]``."""
        x, q = _as_input(uv, 2, "MEICamera.unproject")
        step_tol, res_px = _tolerances(x, q)
        u, v, ok = _split_pixels(x, q)
        xd, yd = (u - self.u0) / self.gamma1, (v - self.v0) / self.gamma2
        mx, my, res = _radtan_undistort(x, xd, yd, self._coeffs, self.max_undistorted_radius, step_tol)
        r2 = mx * mx + my * my
        disc = 1.0 + (1.0 - self.xi**2) * r2
        lam = (self.xi + x.sqrt(x.maximum(disc, 0.0))) / (1.0 + r2)
        rx, ry, rz = lam * mx, lam * my, lam - self.xi
        valid = x.logical_and(ok, self.in_image(q))
        valid = x.logical_and(valid, res * max(self.gamma1, self.gamma2) < res_px)
        valid = x.logical_and(valid, r2 < self.max_undistorted_radius**2)
        rays, valid = _unit_rays(x, rx, ry, rz, valid)
        fov, _ = self._fov_valid(x, rays[..., 0], rays[..., 1], rays[..., 2])
        return rays, x.logical_and(valid, fov)


# --------------------------------------------------------------------------------------------
# WoodScape radial polynomial
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RadialPolyFisheye(CameraModel):
    """WoodScape's ``radial_poly`` fisheye model.

    ``theta = atan2(sqrt(X^2 + Y^2), Z)`` (angle to the optical axis),
    ``rho = k1 theta + k2 theta^2 + k3 theta^3 + k4 theta^4`` (pixels),
    ``u = u0 + rho X / sqrt(X^2 + Y^2)``, ``v = v0 + aspect_ratio * rho Y / sqrt(X^2 + Y^2)``, with the
    principal point ``u0 = W/2 - 0.5 + cx_offset``, ``v0 = H/2 - 0.5 + cy_offset``.

    This follows WoodScape's ``calibration_readme.txt`` and ``projection.py`` (``Camera``): the
    ``-0.5`` moves the image centre to OpenCV's pixel-centre convention, and ``aspect_ratio``
    scales only the vertical offset (``lens_points * [1, aspect_ratio] + principal_point``).

    Valid where ``theta < theta_max`` (the first angle where ``d rho / d theta = 0``, capped at pi)
    and the pixel is in the image; ``unproject`` inverts ``rho(theta)`` by safeguarded Newton on
    ``[0, theta_max]``.
    """

    k1: float
    k2: float
    k3: float
    k4: float
    cx_offset: float = 0.0
    cy_offset: float = 0.0
    aspect_ratio: float = 1.0

    def __post_init__(self) -> None:
        _as_int_size(self)
        super().__post_init__()
        _as_float_fields(self, _float_field_names(type(self)))
        if self.k1 <= 0:
            raise ValueError(f"RadialPolyFisheye: k1 (d rho / d theta at the axis) must be positive, got {self.k1}")
        if self.aspect_ratio <= 0:
            raise ValueError(f"RadialPolyFisheye: aspect_ratio must be positive, got {self.aspect_ratio}")
        theta_max = _first_positive_root([self.k1, 2 * self.k2, 3 * self.k3, 4 * self.k4], math.pi)
        object.__setattr__(self, "theta_max", theta_max)
        object.__setattr__(self, "rho_max", self._rho(theta_max))

    @property
    def u0(self) -> float:
        return self.width / 2.0 - 0.5 + self.cx_offset

    @property
    def v0(self) -> float:
        return self.height / 2.0 - 0.5 + self.cy_offset

    def _rho(self, t):
        return t * (self.k1 + t * (self.k2 + t * (self.k3 + t * self.k4)))

    def _rho_and_slope(self, t):
        return self._rho(t), self.k1 + t * (2 * self.k2 + t * (3 * self.k3 + t * 4 * self.k4))

    @classmethod
    def from_woodscape_json(cls, path) -> "RadialPolyFisheye":
        """Intrinsics from a WoodScape calibration JSON (``intrinsic`` block, ``model: radial_poly``)."""
        d = json.loads(Path(path).read_text())
        try:
            i = d["intrinsic"]
            if i.get("model", "radial_poly") != "radial_poly" or int(i.get("poly_order", 4)) != 4:
                raise ValueError(f"{path}: model {i.get('model')!r} order {i.get('poly_order')}, expected radial_poly order 4")
            return cls(
                i["width"], i["height"], i["k1"], i["k2"], i["k3"], i["k4"],
                i["cx_offset"], i["cy_offset"], i.get("aspect_ratio", 1.0),
            )  # fmt: skip
        except KeyError as e:
            raise ValueError(f"{path}: missing WoodScape intrinsic entry {e}") from None

    def project(self, points_cam: Array) -> tuple[Array, Array]:
        """``points_cam [..., 3]`` → ``uv [..., 2]``, ``valid [...]``."""
        x, p = _as_input(points_cam, 3, "RadialPolyFisheye.project")
        X, Y, Z, ok = _split_points(x, p)
        theta, t_over_r = _theta_over_r(x, X, Y, Z)
        s = t_over_r * (self.k1 + theta * (self.k2 + theta * (self.k3 + theta * self.k4)))  # rho / r_xy
        valid = x.logical_and(ok, theta < self.theta_max)
        return _finish_projection(self, x, self.u0 + X * s, self.v0 + self.aspect_ratio * Y * s, valid)

    def unproject(self, uv: Array) -> tuple[Array, Array]:
        """``uv [..., 2]`` → unit ``rays [..., 3]``, ``valid [...]``."""
        x, q = _as_input(uv, 2, "RadialPolyFisheye.unproject")
        step_tol, res_px = _tolerances(x, q)
        u, v, ok = _split_pixels(x, q)
        lx, ly = u - self.u0, (v - self.v0) / self.aspect_ratio
        rho = _safe_sqrt(x, lx * lx + ly * ly)
        theta, res = _invert_monotonic(x, rho, self._rho_and_slope, self.theta_max, self.k1, step_tol)
        pos = rho > 0
        s = x.where(pos, x.sin(theta) / x.where(pos, rho, 1.0), 1.0 / self.k1)
        valid = x.logical_and(x.logical_and(ok, self.in_image(q)), rho < self.rho_max)
        valid = x.logical_and(valid, res < res_px)
        return _unit_rays(x, lx * s, ly * s, x.cos(theta), valid)


def woodscape_extrinsic(path) -> np.ndarray:
    """WoodScape camera → vehicle transform ``T_vehicle_from_camera [4, 4]`` (float64) from a calibration JSON.

    WoodScape stores the rotation as a **scalar-last** quaternion ``[x, y, z, w]``: its reference
    code builds the matrix with ``scipy.spatial.transform.Rotation.from_quat(quaternion)`` and its
    ``calibration_readme.txt`` points to that function. It maps the OpenCV camera frame (x right,
    y down, z along the optical axis) to the ISO 8855 vehicle frame (x forward, y left, z up, origin
    on the ground below the rear-axle midpoint); the translation is the camera position in metres.
    (Read scalar-first, the front camera of ``front.json`` would look 23 deg to the left with no
    pitch; read scalar-last it looks straight ahead, pitched 23 deg down, as a bumper fisheye does.)
    """
    from perception.geometry.se3 import SE3

    d = json.loads(Path(path).read_text())
    try:
        q = np.asarray(d["extrinsic"]["quaternion"], dtype=np.float64)
        t = np.asarray(d["extrinsic"]["translation"], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"{path}: missing WoodScape extrinsic entry {e}") from None
    if q.shape != (4,) or t.shape != (3,):
        raise ValueError(f"{path}: quaternion must have 4 and translation 3 values, got {q.shape}, {t.shape}")
    n = np.linalg.norm(q)
    if not abs(n - 1.0) < 1e-3:
        raise ValueError(f"{path}: quaternion is not unit length (|q| = {n})")
    x_, y_, z_, w_ = q / n
    return SE3.from_quaternion(np.array([w_, x_, y_, z_]), t).matrix.copy()


# --------------------------------------------------------------------------------------------
# Kannala-Brandt (OpenCV fisheye)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KannalaBrandtCamera(CameraModel):
    """Kannala-Brandt fisheye model in OpenCV's ``cv::fisheye`` form (no skew).

    ``theta = atan2(sqrt(X^2 + Y^2), Z)``, ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
    ``x' = theta_d X / sqrt(X^2 + Y^2)``, ``y' = theta_d Y / sqrt(X^2 + Y^2)``, ``u = fx x' + cx``, ``v = fy y' + cy``.

    Valid where ``theta < theta_max`` (the first angle where ``d theta_d / d theta = 0``, capped at
    pi) and the pixel is in the image, so fields of view beyond 180 deg (points with ``Z < 0``) are
    supported. ``cv2.fisheye`` computes ``theta = atan(r_xy / Z)`` and therefore agrees only for
    ``Z > 0``. ``unproject`` inverts ``theta_d(theta)`` by safeguarded Newton.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0

    def __post_init__(self) -> None:
        _as_int_size(self)
        super().__post_init__()
        _as_float_fields(self, _float_field_names(type(self)))
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"KannalaBrandtCamera: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        deriv = [1.0, 0.0, 3 * self.k1, 0.0, 5 * self.k2, 0.0, 7 * self.k3, 0.0, 9 * self.k4]
        theta_max = _first_positive_root(deriv, math.pi)
        object.__setattr__(self, "theta_max", theta_max)
        object.__setattr__(self, "theta_d_max", self._theta_d(theta_max))

    @property
    def K(self) -> np.ndarray:
        """The ``[3, 3]`` float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist(self) -> tuple[float, float, float, float]:
        """``(k1, k2, k3, k4)`` as ``cv2.fisheye`` takes them."""
        return (self.k1, self.k2, self.k3, self.k4)

    def _poly(self, t2):
        return 1.0 + t2 * (self.k1 + t2 * (self.k2 + t2 * (self.k3 + t2 * self.k4)))

    def _theta_d(self, t):
        return t * self._poly(t * t)

    def _theta_d_and_slope(self, t):
        t2 = t * t
        slope = 1.0 + t2 * (3 * self.k1 + t2 * (5 * self.k2 + t2 * (7 * self.k3 + t2 * 9 * self.k4)))
        return t * self._poly(t2), slope

    def project(self, points_cam: Array) -> tuple[Array, Array]:
        """``points_cam [..., 3]`` → ``uv [..., 2]``, ``valid [...]``."""
        x, p = _as_input(points_cam, 3, "KannalaBrandtCamera.project")
        X, Y, Z, ok = _split_points(x, p)
        theta, t_over_r = _theta_over_r(x, X, Y, Z)
        s = t_over_r * self._poly(theta * theta)  # theta_d / r_xy
        valid = x.logical_and(ok, theta < self.theta_max)
        return _finish_projection(self, x, self.fx * X * s + self.cx, self.fy * Y * s + self.cy, valid)

    def unproject(self, uv: Array) -> tuple[Array, Array]:
        """``uv [..., 2]`` → unit ``rays [..., 3]``, ``valid [...]``."""
        x, q = _as_input(uv, 2, "KannalaBrandtCamera.unproject")
        step_tol, res_px = _tolerances(x, q)
        u, v, ok = _split_pixels(x, q)
        mx, my = (u - self.cx) / self.fx, (v - self.cy) / self.fy
        rd = _safe_sqrt(x, mx * mx + my * my)
        theta, res = _invert_monotonic(x, rd, self._theta_d_and_slope, self.theta_max, 1.0, step_tol)
        pos = rd > 0
        s = x.where(pos, x.sin(theta) / x.where(pos, rd, 1.0), 1.0)
        valid = x.logical_and(x.logical_and(ok, self.in_image(q)), rd < self.theta_d_max)
        valid = x.logical_and(valid, res * max(self.fx, self.fy) < res_px)
        return _unit_rays(x, mx * s, my * s, x.cos(theta), valid)


@dataclass(frozen=True)
class ResizedCamera(CameraModel):
    """``base`` imaged at ``width x height``, for models without an affine pixel map (WoodScape's radial
    polynomial): pixels scale as ``u' = (u + 0.5) sx - 0.5`` (OpenCV centres), the rest is ``base``'s."""

    base: CameraModel = None  # type: ignore[assignment]

    def _scale(self) -> tuple[float, float]:
        return self.width / self.base.width, self.height / self.base.height

    def project(self, points_cam):
        uv, valid = self.base.project(points_cam)
        sx, sy = self._scale()
        x = xp(uv)
        uv = x.stack([(uv[..., 0] + 0.5) * sx - 0.5, (uv[..., 1] + 0.5) * sy - 0.5], -1)
        return uv, x.logical_and(valid, self.in_image(uv))

    def unproject(self, uv):
        sx, sy = self._scale()
        base = xp(uv).stack([(uv[..., 0] + 0.5) / sx - 0.5, (uv[..., 1] + 0.5) / sy - 0.5], -1)
        return self.base.unproject(base)
