import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from perception.geometry import se3
from perception.geometry.se3 import SE3


def random_pose(rng) -> np.ndarray:
    return se3.from_rotation_translation(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3) * 5)


def test_inverse_and_compose_numpy_and_torch():
    rng = np.random.default_rng(0)
    a, b = random_pose(rng), random_pose(rng)
    np.testing.assert_allclose(se3.compose(a, se3.inverse(a)), np.eye(4), atol=1e-12)
    stack = np.stack([a, b])
    np.testing.assert_allclose(se3.inverse(stack)[1], np.linalg.inv(b), atol=1e-12)
    ta = torch.from_numpy(stack)
    np.testing.assert_allclose(se3.inverse(ta).numpy(), se3.inverse(stack), atol=1e-12)
    p = rng.normal(size=(10, 3))
    np.testing.assert_allclose(se3.transform_points(a, p), p @ a[:3, :3].T + a[:3, 3], atol=1e-12)
    tp = se3.transform_points(torch.from_numpy(a), torch.from_numpy(p).float())
    assert tp.dtype == torch.float32
    np.testing.assert_allclose(tp.numpy(), se3.transform_points(a, p), atol=1e-4)


def test_se3_value_and_apply():
    rng = np.random.default_rng(1)
    a, b = SE3(random_pose(rng)), SE3(random_pose(rng))
    p = rng.normal(size=(5, 3))
    np.testing.assert_allclose((a @ b).apply(p), a.apply(b.apply(p)), atol=1e-12)
    np.testing.assert_allclose((a @ a.inverse()).matrix, np.eye(4), atol=1e-12)
    assert a == SE3(a.matrix.copy()) and a != b
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 3.0  # immutable


def test_interpolate_slerp_endpoints_and_midpoint():
    t0 = se3.from_rotation_translation(np.eye(3), [0, 0, 0])
    t1 = se3.from_rotation_translation(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [2, 4, 0])
    np.testing.assert_allclose(se3.interpolate(t0, t1, 0.0), t0, atol=1e-12)
    np.testing.assert_allclose(se3.interpolate(t0, t1, 1.0), t1, atol=1e-12)
    mid = se3.interpolate(t0, t1, 0.5)
    np.testing.assert_allclose(Rotation.from_matrix(mid[:3, :3]).as_euler("zyx", degrees=True)[0], 45, atol=1e-9)
    np.testing.assert_allclose(mid[:3, 3], [1, 2, 0])
    many = se3.interpolate(t0, t1, np.linspace(0, 1, 5))
    assert many.shape == (5, 4, 4)
    yaw = Rotation.from_matrix(many[:, :3, :3]).as_euler("zyx", degrees=True)[:, 0]
    np.testing.assert_allclose(yaw, [0, 22.5, 45, 67.5, 90], atol=1e-9)


def test_from_quaternion_is_scalar_first():
    t = SE3.from_quaternion([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)], [1, 2, 3])  # 90° about z
    np.testing.assert_allclose(t.apply(np.array([[1.0, 0, 0]])), [[1, 3, 3]], atol=1e-12)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.eye(3), "4x4"),
        (np.full((4, 4), np.nan), "non-finite"),
        (np.diag([1.0, 1.0, 1.1, 1.0]), "orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "det"),
        (np.vstack([np.eye(4)[:3], [0, 0, 1, 1]]), "last row"),
    ],
)
def test_invalid_transforms_raise_naming_the_field(matrix, message):
    with pytest.raises(ValueError, match=message):
        SE3(matrix)
    with pytest.raises(ValueError, match="SE3.matrix"):
        SE3(matrix)
