"""tools/calib_control.py: the camera-image swap that shows which corrections a CalibFormer reads from the image."""
from __future__ import annotations

import numpy as np
import pytest

from perception.models.calibformer.data import CalibSimDataset
from perception.models.calibformer.model import CalibFormer
from tools.calib_control import estimates, means, swap_images


@pytest.fixture(scope="module")
def samples():
    """Two frames of one sequence x 3 pinholes, on a jittered rig (the truths differ from the nominal rig's)."""
    ds = CalibSimDataset(seeds=[7], frames=2, size=(64, 32), max_points=4000, fixed_seed=0, mount_jitter=(10.0, 0.25))
    nominal = CalibSimDataset(seeds=[7], frames=2, size=(64, 32), max_points=4000, fixed_seed=0)
    assert ds._key() != nominal._key()
    assert not np.allclose(ds[0].target.cam_from_lidar, nominal[0].target.cam_from_lidar, atol=1e-3)
    return [ds[i] for i in range(len(ds))]


def test_swap_keeps_the_camera_and_everything_but_the_image(samples):
    swapped = swap_images(samples, 3)  # frame-major over 3 cameras: 3 on is the same camera, next frame
    for i, (s, w) in enumerate(zip(samples, swapped)):
        assert w.inputs.image is samples[(i + 3) % 6].inputs.image and w.inputs.camera == s.inputs.camera
        assert w.inputs.points is s.inputs.points and w.target is s.target
        np.testing.assert_array_equal(w.inputs.init, s.inputs.init)
    with pytest.raises(ValueError, match="not the same camera"):
        swap_images(samples, 1)
    with pytest.raises(ValueError, match="multiple of 6"):
        swap_images(samples, 6)


def test_an_untrained_model_scores_the_start_with_either_image(samples):
    model = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1,
                        dec_layers=1, iterations=1).eval()  # starts at the identity correction
    init = means(np.stack([s.inputs.init for s in samples]), samples)
    assert init["rot_geodesic_deg_mean"] > 1.0 and init["trans_norm_cm_mean"] > 2.0
    for run in (samples, swap_images(samples, 3)):
        got = means(estimates(model, run, batch_size=4), samples)
        assert got.keys() == init.keys()
        np.testing.assert_allclose(list(got.values()), list(init.values()), atol=2e-3)
