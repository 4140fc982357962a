"""CameraPreprocess: resize with consistent intrinsics, normalization values, undistortion, fisheye pass-through."""
import numpy as np
import torch

from perception.geometry.cameras import KannalaBrandtCamera, PinholeCamera
from perception.pipeline.stages import CameraConfig, CameraPreprocess
from perception.structures import CameraImage

MEAN, STD = (100.0, 110.0, 120.0), (50.0, 25.0, 10.0)


def test_resize_normalize_shape_values_and_scaled_intrinsics():
    cam = PinholeCamera(80, 40, 60.0, 55.0, 39.5, 19.5)
    img = np.empty((40, 80, 3), np.uint8)
    img[:] = (150, 60, 130)
    out = CameraPreprocess(CameraConfig(size=(40, 20), mean=MEAN, std=STD)).process(CameraImage(img, cam, 1.0, "cam"))
    assert out.image.shape == (3, 20, 40) and out.image.dtype == torch.float32
    for ch, (v, m, s) in enumerate(zip((150, 60, 130), MEAN, STD)):
        torch.testing.assert_close(out.image[ch], torch.full((20, 40), (v - m) / s))
    assert out.scale == (0.5, 0.5) and not out.undistorted and out.source_camera is cam
    # the scaled model images a 3D point where the resize moves its pixel: u' = (u + 0.5) s - 0.5
    p = np.array([[0.3, -0.1, 2.0], [-0.5, 0.2, 3.0]])
    uv, _ = cam.project(p)
    uv2, valid = out.camera.project(p)
    np.testing.assert_allclose(uv2, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)
    assert valid.all() and (out.camera.width, out.camera.height) == (40, 20)


def test_undistort_pinhole_moves_pixels_to_the_ideal_projection():
    """Distorted image = its own u coordinate; after undistortion, pixel (u', v') of the ideal pinhole
    must hold the distorted u where the same ray lands."""
    cam = PinholeCamera(200, 100, 90.0, 90.0, 99.5, 49.5, k1=-0.2, k2=0.05)
    u = np.arange(200)
    img = np.repeat(np.repeat(np.clip(u, 0, 255)[None, :, None], 100, 0), 3, 2).astype(np.uint8)
    out = CameraPreprocess(CameraConfig(mean=(0, 0, 0), std=(1, 1, 1))).process(CameraImage(img, cam, 0.0, "cam"))
    assert out.undistorted and out.camera.dist == (0, 0, 0, 0, 0) and out.image.shape == (3, 100, 200)
    grid = cam.pixel_grid(7)
    rays = np.concatenate([(grid - [cam.cx, cam.cy]) / [cam.fx, cam.fy], np.ones(grid.shape[:2] + (1,))], -1)
    src, valid = cam.project(rays)
    inside = valid & (src[..., 0] > 1) & (src[..., 0] < 198)
    assert inside.sum() > 100
    got = out.image[0].numpy()[grid[..., 1].astype(int), grid[..., 0].astype(int)]
    np.testing.assert_allclose(got[inside], src[..., 0][inside], atol=0.6)  # uint8 + cv2 1/32 px weights
    # corners really moved: barrel distortion pulls the border inwards
    assert np.abs(got[inside] - grid[..., 0][inside]).max() > 3


def test_fisheye_passes_through_undistorted_and_rescaled():
    cam = KannalaBrandtCamera(64, 64, 20.0, 20.0, 31.5, 31.5, 0.02, -0.005)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stage = CameraPreprocess(CameraConfig(mean=(0, 0, 0), std=(1, 1, 1)))
    out = stage.process(CameraImage(img, cam, 0.0, "fish"))
    assert not out.undistorted and out.camera == cam
    np.testing.assert_array_equal(out.image.numpy().transpose(1, 2, 0), img.astype(np.float32))
    half = CameraPreprocess(CameraConfig(size=(32, 32))).process(CameraImage(img, cam, 0.0, "fish"))
    assert half.camera.fx == 10.0 and half.camera.cx == 15.5 and half.camera.k1 == cam.k1


def test_resize_of_a_radial_polynomial_fisheye_keeps_a_camera_model():
    """WoodScape's model has no affine pixel map: the resized view's model wraps it (ResizedCamera), and a
    point projects to the resized image where the full-size projection, rescaled, puts it."""
    from perception.geometry.cameras import RadialPolyFisheye, ResizedCamera

    cam = RadialPolyFisheye(128, 96, 40.0, -3.0, 2.0, 0.0, 0.0, 0.0, 1.0)
    img = np.zeros((96, 128, 3), np.uint8)
    out = CameraPreprocess(CameraConfig(size=(64, 48))).process(CameraImage(img, cam, 0.0, "fish"))
    assert isinstance(out.camera, ResizedCamera) and (out.camera.width, out.camera.height) == (64, 48)
    p = np.array([[0.3, -0.2, 1.0]])
    uv, ok = cam.project(p)
    uv2, ok2 = out.camera.project(p)
    assert ok[0] and ok2[0]
    np.testing.assert_allclose(uv2[0], (uv[0] + 0.5) * 0.5 - 0.5, atol=1e-9)
