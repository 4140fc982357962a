"""Tests of perception.geometry.cameras: round trips on real calibrations, OpenCV agreement, numpy/torch parity, edge cases."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.geometry.cameras import (
    KannalaBrandtCamera,
    MEICamera,
    PinholeCamera,
    RadialPolyFisheye,
    woodscape_extrinsic,
)

cv2 = pytest.importorskip("cv2")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")

MEI_YAML = DATA / "kitti360" / "calibration" / "image_02.yaml"
PERSPECTIVE_TXT = DATA / "kitti360" / "calibration" / "perspective.txt"
WOODSCAPE_JSON = DATA / "woodscape" / "front.json"

# KITTI-360 camera 00 (perspective.txt: K_00, D_00, S_00), also usable without the data folder.
KITTI360_K00 = np.array([[788.629315, 0.0, 687.158398], [0.0, 786.382230, 317.752196], [0.0, 0.0, 1.0]])
KITTI360_D00 = np.array([-0.344441, 0.141678, 0.000414, -0.000222, -0.029608])


def kitti360_pinhole() -> PinholeCamera:
    return PinholeCamera.from_matrix(KITTI360_K00, 1392, 512, KITTI360_D00)


def kb_camera() -> KannalaBrandtCamera:
    """A realistic 163-degree fisheye (Intel RealSense T265-like calibration, 848x800)."""
    return KannalaBrandtCamera(848, 800, 285.72, 285.93, 420.8, 402.9, -0.00678, 0.04445, -0.04165, 0.00793)


def mei_synthetic() -> MEICamera:
    """KITTI-360 image_02's parameters, typed in, so the generic tests run without the data folder."""
    return MEICamera(1400, 1400, 2.2134047507854890, 1.6798235660113681e-02, 1.6548773243373522,
                     4.2223943394772046e-04, 4.2462134260997584e-04,
                     1.3363220825849971e03, 1.3357883350012958e03, 7.1694323510126321e02, 7.0576498308221585e02)  # fmt: skip


def woodscape_synthetic() -> RadialPolyFisheye:
    """WoodScape front.json's intrinsics, typed in."""
    return RadialPolyFisheye(1280, 966, 339.749, -31.988, 48.275, -7.201, 3.942, -3.093, 1.0)


ALL_CAMERAS = {
    "pinhole": kitti360_pinhole,
    "mei": mei_synthetic,
    "woodscape": woodscape_synthetic,
    "kb": kb_camera,
}


def full_image_pixels(cam, step: int = 2) -> np.ndarray:
    """Pixel centres ``[N, 2]``: a ``step`` grid plus every pixel of the four borders (so corners are covered)."""
    grid = cam.pixel_grid(step).reshape(-1, 2)
    w, h = cam.width, cam.height
    us, vs = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    border = np.concatenate([
        np.stack([us, np.zeros(w)], -1), np.stack([us, np.full(w, h - 1.0)], -1),
        np.stack([np.zeros(h), vs], -1), np.stack([np.full(h, w - 1.0), vs], -1),
    ])  # fmt: skip
    return np.concatenate([grid, border])


def pixel_round_trip(cam, step: int = 2) -> tuple[float, float]:
    """project(unproject(uv)) over the whole image → (max error px over valid pixels, valid fraction)."""
    uv = full_image_pixels(cam, step)
    rays, valid = cam.unproject(uv)
    assert np.isfinite(rays).all()
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, atol=1e-12)
    uv2, valid2 = cam.project(rays)
    assert valid2[valid].all(), "a ray from a valid pixel projects as invalid"
    err = np.linalg.norm(uv2 - uv, axis=-1)[valid]
    return float(err.max()), float(valid.mean())


# ---------------------------------------------------------------------------------------------
# pixel → ray → pixel over the whole image
# ---------------------------------------------------------------------------------------------


@needs_data
def test_kitti360_mei_round_trip_whole_image():
    cam = MEICamera.from_kitti360_yaml(MEI_YAML)
    assert cam == mei_synthetic()
    err, frac = pixel_round_trip(cam)
    assert err < 1e-3
    # The valid region is the disc inside the sphere fold (|m| < 1/sqrt(xi^2-1), ~753 px):
    # observed 0.862 with the border pixels, 0.868 on the grid alone.
    assert frac > 0.8
    # Corner pixels lie beyond the fold and must be invalid; the image centre row must be fully valid.
    rays, valid = cam.unproject(np.array([[0.0, 0.0], [1399.0, 1399.0], [0.0, 705.0], [1399.0, 705.0]]))
    assert valid.tolist() == [False, False, True, True]


@needs_data
def test_woodscape_round_trip_whole_image():
    cam = RadialPolyFisheye.from_woodscape_json(WOODSCAPE_JSON)
    assert cam == woodscape_synthetic()
    err, frac = pixel_round_trip(cam)
    assert err < 1e-3
    assert frac > 0.99  # the polynomial is monotonic up to pi: every pixel (corners at ~112 deg) is valid


def test_kb_round_trip_whole_image():
    err, frac = pixel_round_trip(kb_camera())
    assert err < 1e-3
    assert frac > 0.99


def test_distorted_pinhole_round_trip_whole_image():
    cam = kitti360_pinhole()
    err, frac = pixel_round_trip(cam)
    assert err < 1e-3
    # D_00's radial polynomial turns at r_u = 1.46 (r_d = 0.91); the extreme corners lie beyond it.
    assert 0.95 < frac < 1.0
    assert cam.max_undistorted_radius == pytest.approx(1.4635, abs=1e-3)


@needs_data
def test_kitti360_perspective_txt_matches_constants():
    vals = {}
    for line in PERSPECTIVE_TXT.read_text().splitlines():
        key, _, rest = line.partition(":")
        vals[key.strip()] = rest.split()
    K = np.array(vals["K_00"], dtype=np.float64).reshape(3, 3)  # K_00[2, 2] is 0 in the file
    cam = PinholeCamera.from_matrix(K, *map(lambda s: int(float(s)), vals["S_00"]), dist=np.array(vals["D_00"], dtype=float))
    assert cam == kitti360_pinhole()
    np.testing.assert_array_equal(cam.K, KITTI360_K00)


# ---------------------------------------------------------------------------------------------
# point → pixel → ray
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_point_round_trip(name):
    cam = ALL_CAMERAS[name]()
    rng = np.random.default_rng(0)
    d = rng.normal(size=(20000, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    pts = d * rng.uniform(0.5, 80.0, size=(20000, 1))
    uv, valid = cam.project(pts)
    assert np.isfinite(uv).all()
    assert valid.sum() > 1000, f"only {valid.sum()} of 20000 random points are in the field of view"
    rays, valid2 = cam.unproject(uv[valid])
    assert valid2.all()
    np.testing.assert_allclose(rays, d[valid], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# agreement with OpenCV
# ---------------------------------------------------------------------------------------------


def test_pinhole_matches_cv2_project_points():
    cam = kitti360_pinhole()
    rng = np.random.default_rng(1)
    z = rng.uniform(0.5, 50.0, 5000)
    xy = rng.uniform(-1.4, 1.4, (5000, 2)) * np.array([1.0, 0.7])
    pts = np.concatenate([xy * z[:, None], z[:, None]], axis=-1)
    uv, valid = cam.project(pts)
    assert valid.sum() > 1500
    ref, _ = cv2.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), KITTI360_K00, KITTI360_D00)
    ref = ref.reshape(-1, 2)
    assert np.abs(uv - ref)[valid].max() < 1e-3
    # Also where the pixel falls outside the image but the point is inside the model's limit.
    inside_limit = np.hypot(xy[:, 0], xy[:, 1]) < cam.max_undistorted_radius
    assert np.abs(uv - ref)[inside_limit].max() < 1e-3


def test_pinhole_unproject_matches_cv2_undistort_points():
    cam = kitti360_pinhole()
    uv = full_image_pixels(cam, step=8)
    rays, valid = cam.unproject(uv)
    ours = rays[:, :2] / rays[:, 2:]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 500, 1e-12)
    ref = cv2.undistortPointsIter(uv.reshape(-1, 1, 2), KITTI360_K00, KITTI360_D00, None, None, criteria).reshape(-1, 2)
    # Only where OpenCV's fixed-point iteration converged: its solution reprojects onto the pixel.
    back, _ = cv2.projectPoints(np.concatenate([ref, np.ones((len(ref), 1))], -1).reshape(-1, 1, 3),
                                np.zeros(3), np.zeros(3), KITTI360_K00, KITTI360_D00)  # fmt: skip
    converged = np.linalg.norm(back.reshape(-1, 2) - uv, axis=-1) < 1e-6
    both = valid & converged
    assert both.sum() > 0.9 * valid.sum()
    assert np.abs(ours - ref)[both].max() < 1e-4


def test_kannala_brandt_matches_cv2_fisheye():
    cam = kb_camera()
    rng = np.random.default_rng(2)
    d = rng.normal(size=(5000, 3))
    d[:, 2] = np.abs(d[:, 2]) + 1e-3  # cv2.fisheye uses atan(r/z): only meaningful for z > 0
    pts = d * rng.uniform(0.5, 30.0, (5000, 1))
    uv, valid = cam.project(pts)
    assert valid.sum() > 4000
    ref, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, np.array(cam.dist))
    assert np.abs(uv - ref.reshape(-1, 2)).max() < 1e-3  # all z > 0 points, in the image or not


# ---------------------------------------------------------------------------------------------
# model-specific limits and conventions
# ---------------------------------------------------------------------------------------------


def test_mei_fold_limit():
    cam = mei_synthetic()
    fold = math.acos(-1.0 / cam.xi)  # 116.8 deg for xi = 2.21
    assert math.degrees(fold) == pytest.approx(116.8, abs=0.1)
    assert cam.max_undistorted_radius == pytest.approx(1.0 / math.sqrt(cam.xi**2 - 1.0))
    az = math.radians(45.0)  # towards the image corner, where the fold radius is still inside the image
    thetas = np.array([fold - 0.02, fold + 0.02, fold + 0.3])
    pts = np.stack([np.sin(thetas) * math.cos(az), np.sin(thetas) * math.sin(az), np.cos(thetas)], -1)
    uv, valid = cam.project(pts)
    assert valid.tolist() == [True, False, False]
    # Beyond the fold the pixel would be inside the image and alias a point before the fold.
    assert cam.in_image(uv).all()


def test_kannala_brandt_beyond_180_degrees():
    cam = KannalaBrandtCamera(1000, 1000, 200.0, 200.0, 499.5, 499.5)  # equidistant, theta_max = pi
    assert cam.theta_max == pytest.approx(math.pi)
    theta = math.radians(100.0)
    p = np.array([math.sin(theta), 0.0, math.cos(theta)]) * 3.0  # z < 0
    uv, valid = cam.project(p)
    assert valid and uv[0] == pytest.approx(499.5 + 200.0 * theta)
    ray, ok = cam.unproject(uv)
    assert ok
    np.testing.assert_allclose(ray, p / 3.0, atol=1e-12)
    # A distortion whose theta_d turns back: theta_max = sqrt(1 / (3 * 0.1)) = 1.826 rad.
    folded = KannalaBrandtCamera(1000, 1000, 200.0, 200.0, 499.5, 499.5, k1=-0.1)
    assert folded.theta_max == pytest.approx(math.sqrt(1.0 / 0.3))
    t = np.array([1.7, 1.9])
    _, valid = folded.project(np.stack([np.sin(t), np.zeros(2), np.cos(t)], -1))
    assert valid.tolist() == [True, False]


def test_woodscape_principal_point_and_aspect():
    cam = woodscape_synthetic()
    assert (cam.u0, cam.v0) == pytest.approx((1280 / 2 - 0.5 + 3.942, 966 / 2 - 0.5 - 3.093))
    theta = 0.7
    rho = 339.749 * theta - 31.988 * theta**2 + 48.275 * theta**3 - 7.201 * theta**4
    squashed = dataclasses.replace(cam, aspect_ratio=0.9)
    p = np.array([[0.0, math.sin(theta), math.cos(theta)], [math.sin(theta), 0.0, math.cos(theta)]])
    uv, _ = squashed.project(p)
    np.testing.assert_allclose(uv, [[cam.u0, cam.v0 + 0.9 * rho], [cam.u0 + rho, cam.v0]], atol=1e-9)
    rays, ok = squashed.unproject(uv)
    assert ok.all()
    np.testing.assert_allclose(rays, p, atol=1e-12)


@needs_data
def test_woodscape_extrinsic_is_scalar_last_camera_to_vehicle():
    from scipy.spatial.transform import Rotation

    t = woodscape_extrinsic(WOODSCAPE_JSON)
    import json

    q = json.loads(WOODSCAPE_JSON.read_text())["extrinsic"]["quaternion"]
    np.testing.assert_allclose(t[:3, :3], Rotation.from_quat(q).as_matrix(), atol=1e-12)  # WoodScape's own reading
    np.testing.assert_allclose(t[:3, 3], [3.7484, 0.0, 0.66017])
    # Front camera: optical axis forward and ~23 deg down, image x to the vehicle's right, image y mostly down.
    optical, right, down = t[:3, 2], t[:3, 0], t[:3, 1]
    assert optical[0] > 0.9 and -0.45 < optical[2] < -0.35
    assert right[1] < -0.99
    assert down[2] < -0.9


def test_pinhole_matrix_helpers():
    cam = kitti360_pinhole()
    np.testing.assert_array_equal(cam.K, KITTI360_K00)
    assert cam.dist == tuple(KITTI360_D00)
    assert PinholeCamera.from_matrix(KITTI360_K00, 1392, 512).dist == (0.0,) * 5
    skewed = KITTI360_K00.copy()
    skewed[0, 1] = 1.0
    with pytest.raises(ValueError, match="skew"):
        PinholeCamera.from_matrix(skewed, 1392, 512)
    # No distortion: unproject is exact.
    plain = PinholeCamera(640, 480, 500.0, 500.0, 319.5, 239.5)
    ray, ok = plain.unproject(np.array([419.5, 239.5]))
    assert ok and np.allclose(ray, np.array([0.2, 0.0, 1.0]) / math.hypot(0.2, 1.0))


# ---------------------------------------------------------------------------------------------
# numpy / torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_numpy_torch_parity_float64(name):
    cam = ALL_CAMERAS[name]()
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(500, 3)) + np.array([0.0, 0.0, 1.5])
    uv_n, v_n = cam.project(pts)
    uv_t, v_t = cam.project(torch.from_numpy(pts))
    assert isinstance(uv_t, torch.Tensor) and uv_t.dtype == torch.float64 and v_t.dtype == torch.bool
    np.testing.assert_array_equal(v_t.numpy(), v_n)
    np.testing.assert_allclose(uv_t.numpy(), uv_n, atol=1e-9, rtol=0)
    pix = cam.pixel_grid(16).reshape(-1, 2)
    r_n, w_n = cam.unproject(pix)
    r_t, w_t = cam.unproject(torch.from_numpy(pix))
    np.testing.assert_array_equal(w_t.numpy(), w_n)
    np.testing.assert_allclose(r_t.numpy()[w_n], r_n[w_n], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_float32(name):
    cam = ALL_CAMERAS[name]()
    pix = cam.pixel_grid(16).reshape(-1, 2)
    r64, w64 = cam.unproject(pix)
    for arr in (torch.from_numpy(pix).float(), pix.astype(np.float32)):
        rays, valid = cam.unproject(arr)
        assert rays.dtype == arr.dtype
        rays = np.asarray(rays)
        valid = np.asarray(valid)
        assert (valid == w64).mean() > 0.99
        both = valid & w64
        assert np.abs(rays - r64)[both].max() < 1e-4
        uv, pv = cam.project(arr.new_tensor(rays) if isinstance(arr, torch.Tensor) else rays)
        assert uv.dtype == arr.dtype
        assert np.abs(np.asarray(uv) - pix)[both & np.asarray(pv)].max() < 2e-2


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_torch_autograd_through_project(name):
    cam = ALL_CAMERAS[name]()
    pts = torch.tensor(
        [[0.0, 0.0, 5.0], [0.3, -0.2, 2.0], [1.0, 0.5, 4.0], [float("nan"), 0.0, 1.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    uv, valid = cam.project(pts)
    assert valid[:3].all()
    (uv[valid] ** 2).sum().backward()
    assert torch.isfinite(pts.grad).all()
    assert pts.grad[:3].abs().sum() > 0
    # The gradient is right: compare with finite differences on the off-axis point.
    p = pts.detach()[1].numpy()
    jac = torch.autograd.functional.jacobian(lambda q: cam.project(q)[0], torch.from_numpy(p)).numpy()
    h = 1e-6
    fd = np.stack([(cam.project(p + h * e)[0] - cam.project(p - h * e)[0]) / (2 * h) for e in np.eye(3)], -1)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------


def principal_point(cam) -> tuple[float, float]:
    if isinstance(cam, MEICamera):
        return cam.u0, cam.v0
    if isinstance(cam, RadialPolyFisheye):
        return cam.u0, cam.v0
    return cam.cx, cam.cy


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_optical_axis(name):
    cam = ALL_CAMERAS[name]()
    pp = principal_point(cam)
    for arr in (np.array([0.0, 0.0, 5.0]), torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)):
        uv, valid = cam.project(arr)
        assert bool(valid)
        np.testing.assert_allclose(np.asarray(uv), pp, atol=1e-9)
    ray, ok = cam.unproject(np.array(pp))
    assert bool(ok)
    np.testing.assert_allclose(ray, [0.0, 0.0, 1.0], atol=1e-12)
    ray_t, ok_t = cam.unproject(torch.tensor(pp, dtype=torch.float64))
    assert bool(ok_t) and torch.isfinite(ray_t).all()


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_non_finite_and_degenerate_inputs(name):
    cam = ALL_CAMERAS[name]()
    nan, inf = float("nan"), float("inf")
    pts = np.array([[nan, 0.0, 1.0], [0.0, inf, 1.0], [0.0, 0.0, -inf], [0.0, 0.0, 0.0], [0.1, 0.1, 1.0]])
    for arr in (pts, torch.from_numpy(pts)):
        uv, valid = cam.project(arr)
        assert np.isfinite(np.asarray(uv)).all()
        assert np.asarray(valid).tolist() == [False, False, False, False, True]
    pix = np.array([[nan, 10.0], [10.0, inf], [-inf, -inf], [10.0, 10.0]])
    for arr in (pix, torch.from_numpy(pix)):
        rays, valid = cam.unproject(arr)
        assert np.isfinite(np.asarray(rays)).all()
        assert np.asarray(valid)[:3].tolist() == [False, False, False]
    # Pixels outside the image are not valid (but their rays are finite).
    rays, valid = cam.unproject(np.array([[-5.0, 10.0], [cam.width + 3.0, 10.0]]))
    assert not valid.any() and np.isfinite(rays).all()


@pytest.mark.parametrize("name", list(ALL_CAMERAS))
def test_shapes(name):
    cam = ALL_CAMERAS[name]()
    cls = type(cam).__name__
    with pytest.raises(ValueError, match=rf"{cls}\.project.*\(4, 2\)"):
        cam.project(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=rf"{cls}\.unproject.*\(4, 3\)"):
        cam.unproject(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=rf"{cls}\.project.*\(\)"):
        cam.project(np.float64(1.0))
    uv, valid = cam.project(np.tile([0.0, 0.0, 1.0], (2, 3, 1)))
    assert uv.shape == (2, 3, 2) and valid.shape == (2, 3) and valid.dtype == bool
    rays, valid = cam.unproject(torch.zeros(5, 0, 2, dtype=torch.float64))
    assert rays.shape == (5, 0, 3) and valid.shape == (5, 0)
    uv, valid = cam.project(np.array([[0, 0, 3]]))  # integer input is computed in float64
    assert uv.dtype == np.float64 and valid.all()


def test_invalid_parameters():
    with pytest.raises(ValueError):
        PinholeCamera(640, 480, -1.0, 500.0, 320.0, 240.0)
    with pytest.raises(ValueError):
        RadialPolyFisheye(640, 480, -1.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        MEICamera(640, 480, -0.5, 0, 0, 0, 0, 300.0, 300.0, 320.0, 240.0)
    with pytest.raises(ValueError):
        KannalaBrandtCamera(0, 480, 300.0, 300.0, 320.0, 240.0)
    with pytest.raises(ValueError):
        PinholeCamera(640, 480, math.nan, 500.0, 320.0, 240.0)
