"""Motion-parallax refinement of a camera-LiDAR extrinsic (perception/models/calibformer/parallax.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception.models.calibformer.geometry import Miscalibration
from perception.models.calibformer.parallax import (ParallaxView, band_pass, frame_pairs, parallax_score,
                                                    parallax_view, refine_parallax)

CAMERA = "CAM_R0"  # the navsim rig's right camera: the kerb-side buildings and parked cars, 5-10 m away


@pytest.fixture(scope="module")
def drive():
    """Six rendered frames (0.6 s) of a synthetic drive: the right camera's parallax views (moving road users' points
    left out, as the evaluation does) and its true extrinsic."""
    from perception.sim.scene import SimConfig, SimSequence

    seq = SimSequence(7, SimConfig(frames=6, rigs=("navsim",)))
    samples = [seq[k] for k in range(6)]
    views = [parallax_view(s.frame, CAMERA, movers=s.targets.boxes.tensor) for s in samples]
    f = samples[0].frame
    return samples, views, f.calib.transform(CAMERA, next(iter(f.lidar))).matrix


def _offset(view_truth: np.ndarray, est: np.ndarray) -> float:
    return float(np.linalg.norm(est[:3, 3] - view_truth[:3, 3]) * 100)


def test_frame_pairs_are_the_gaps_both_ways():
    assert sorted(frame_pairs(4, (2, 3))) == [(0, 2), (0, 3), (1, 3), (2, 0), (3, 0), (3, 1)]
    assert frame_pairs(2, (2,)) == []


def test_visibility_keeps_the_nearest_point_per_cell_up_to_the_image_edges():
    from perception.models.calibformer.parallax import _nearest_in_cell

    uv = np.array([[1.0, 1.0], [2.0, 2.0], [-0.3, 1.0], [5.0, 5.0]])  # the third within half a pixel of the edge
    z = np.array([5.0, 10.0, 4.0, 1.0])
    # 6x6 image, 4-px cells: the edge point is in the top-left cell with the first two and the nearest there (both
    # hidden), not in the bottom-right one, where the nearer point would hide it
    np.testing.assert_array_equal(_nearest_in_cell(uv, z, (6, 6), 4, (0.05, 0.2)), [False, False, True, True])


def test_band_pass_removes_shading_and_keeps_texture():
    ramp = np.mgrid[:64, :64][1].astype(np.float32) / 64  # shading: a smooth ramp
    texture = (np.indices((64, 64)).sum(0) % 8 < 4).astype(np.float32)  # stripes 4 px wide
    assert np.abs(band_pass(ramp)[8:-8, 8:-8]).max() < 1e-3
    assert band_pass(texture)[8:-8, 8:-8].std() > 0.1


def test_views_carry_the_full_resolution_image_and_the_lidar_pose(drive):
    samples, views, _ = drive
    v = views[0]
    cam = samples[0].frame.calib.cameras[CAMERA]
    assert v.image.shape == (cam.height, cam.width) and 100 < len(v.points) <= 4000
    # the LiDAR moves forward between frames by what the car drove
    moved = views[5].world_from_lidar[:3, 3] - views[0].world_from_lidar[:3, 3]
    speed = np.mean([s.frame.meta["ego_speed"] for s in samples])
    assert abs(np.linalg.norm(moved) - 0.5 * speed) < 0.1 * speed


def test_score_peaks_at_the_true_extrinsic(drive):
    _, views, truth = drive
    at_truth = parallax_score(views, truth, gaps=(2, 3))
    assert 0.3 < at_truth <= 1.0
    for axis in range(3):
        t = np.zeros(3)
        t[axis] = 0.15
        for sign in (1, -1):
            assert parallax_score(views, Miscalibration(np.eye(3), sign * t).apply(truth), gaps=(2, 3)) < at_truth
    turned = Miscalibration(Rotation.from_euler("y", 0.5, degrees=True).as_matrix(), np.zeros(3)).apply(truth)
    assert parallax_score(views, turned, gaps=(2, 3)) < at_truth


def test_refinement_recovers_an_offset_across_the_surfaces_it_sees(drive):
    """The right camera sees the ground and kerb-side facades: with the rotation right, an offset down and towards
    them (normal to both surfaces) is recovered. (An offset *along* a surface keeps the points on it, so both frames
    still agree: parallax alone does not constrain it; README, "CalibFormer".)"""
    _, views, truth = drive
    start = Miscalibration(np.eye(3), np.array([0.0, -0.06, 0.08])).apply(truth)
    out = refine_parallax(views, start, gaps=(2, 3))
    assert out.taken and out.score > out.start_score
    assert np.array_equal(out.start, start)
    err = Miscalibration.between(truth, out.estimate).translation * 100
    assert np.linalg.norm(err) < 0.4 * _offset(truth, start) and np.abs(err[1:]).max() < 3.0
    moved = Miscalibration.between(start, out.estimate)
    assert moved.angle_deg <= np.sqrt(3) * 1.0 + 1e-6 and np.abs(moved.translation).max() <= 0.15 + 1e-9


def test_refinement_started_at_the_truth_stays_near_it(drive):
    _, views, truth = drive
    out = refine_parallax(views, truth, gaps=(2, 3))
    walk = Miscalibration.between(truth, out.estimate)
    assert _offset(truth, out.estimate) < 3.0 and walk.angle_deg < 0.3


def test_refinement_refuses_what_it_cannot_score(drive):
    _, views, truth = drive
    backwards = Miscalibration(Rotation.from_euler("y", 180, degrees=True).as_matrix(), np.zeros(3)).apply(truth)
    out = refine_parallax(views, backwards, gaps=(2, 3))
    assert np.isnan(out.start_score) and not out.taken and np.array_equal(out.estimate, backwards)
    with pytest.raises(ValueError, match="no pair"):
        refine_parallax(views[:2], truth, gaps=(2, 3))
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        refine_parallax(views, truth[:3], gaps=(2, 3))


def test_bad_views_and_frames_without_a_pose_are_refused(drive):
    samples, views, _ = drive
    with pytest.raises(ValueError, match="ego_pose"):
        parallax_view(replace(samples[0].frame, ego_pose=None), CAMERA)
    with pytest.raises(KeyError, match="no image"):
        parallax_view(samples[0].frame, "CAM_B0")
    v = views[0]
    with pytest.raises(ValueError, match="does not match"):
        ParallaxView(v.token, v.image[:-1], v.camera, v.points, v.world_from_lidar)
    bad = v.points.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        ParallaxView(v.token, v.image, v.camera, bad, v.world_from_lidar)


def test_calibrator_refines_a_sequence_by_parallax_when_asked(drive):
    from perception.models.calibformer.calibrate import RELEASED, Calibrator

    samples, _, truth = drive
    frames = [s.frame for s in samples]
    turn = Rotation.from_euler("y", 1.0, degrees=True).as_matrix()
    init = Miscalibration(turn, np.array([0.0, 0.0, 0.05])).apply(truth)
    cal = Calibrator(*RELEASED)
    plain = cal.calibrate(frames, CAMERA, init)
    refined = cal.calibrate(frames, CAMERA, init, parallax=True)
    assert plain.parallax is None and refined.parallax is not None
    np.testing.assert_allclose(refined.parallax.start, plain.estimate, atol=1e-9)  # the step starts at the median
    np.testing.assert_array_equal(refined.estimate, refined.parallax.estimate)
    assert refined.parallax.score >= refined.parallax.start_score
    with pytest.raises(ValueError, match="ego_pose"):
        cal.calibrate([replace(f, ego_pose=None) for f in frames], CAMERA, init, parallax=True)


def test_calib_sequence_reports_the_estimate_before_and_after_parallax():
    from perception.models.calibformer.data import CalibSimDataset
    from perception.models.calibformer.model import CalibFormer
    from tests.models.test_calibformer_align import TINY
    from tools.calib_sequence import evaluate

    ds = CalibSimDataset(seeds=[7], frames=4, cameras=(CAMERA,), size=(64, 32), max_points=4000, fixed_seed=0)
    samples = [ds[i] for i in range(len(ds))]
    views = {v.token: v for v in (parallax_view(s.frame, CAMERA) for s in ds.sim_samples())}
    assert set(views) == {s.inputs.token for s in samples}
    model = CalibFormer(**{**TINY, "intensity": False}).eval()  # untrained: the identity correction
    out = evaluate(model, samples, draws=2, max_deg=1.0, max_m=0.08, views=views)
    assert out["rigs"] == 1 and out["estimates"] == 2 and 0 <= out["parallax_worse"] <= out["parallax_taken"] <= 2
    np.testing.assert_allclose(list(out["before_parallax"].values()), list(out["initial"].values()), atol=2e-3)
    assert out["parallax_taken"] >= 1 and out["sequence"] != out["before_parallax"]
