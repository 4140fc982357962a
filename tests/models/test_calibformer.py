"""CalibFormer: the miscalibration algebra, sparse depth images, correlation, inputs from frames, and learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from perception.geometry.cameras import PinholeCamera
from perception.models.calibformer.data import (CalibInput, CalibSample, CalibSimDataset, CalibTarget, calib_input,
                                                finite_points, unit_intensity)
from perception.models.calibformer.geometry import (LCCNET_RANGE, Miscalibration, depth_image, quat_angle,
                                                    quat_from_matrix, quat_to_matrix, sample_miscalibration)
from perception.models.calibformer.model import CalibFormer, local_correlation

CAM = PinholeCamera(width=16, height=8, fx=10.0, fy=10.0, cx=7.0, cy=3.0)


def test_miscalibration_sampler_ranges_and_inverse():
    rng = np.random.default_rng(0)
    gt = np.eye(4)
    gt[:3, 3] = [0.1, -0.2, 0.3]
    for _ in range(50):
        m = sample_miscalibration(rng, *LCCNET_RANGE)
        assert np.all(np.abs(Rotation.from_matrix(m.rotation).as_euler("xyz", degrees=True)) <= 20.0 + 1e-9)
        assert np.all(np.abs(m.translation) <= 1.5)
        init = m.apply(gt)
        # the correction from init back to the truth is the inverse miscalibration, and undoes it exactly
        corr = Miscalibration.between(init, gt)
        np.testing.assert_allclose(corr.apply(init), gt, atol=1e-12)
        np.testing.assert_allclose(corr.rotation, m.inverse().rotation, atol=1e-12)
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        m.apply(np.eye(3))
    with pytest.raises(ValueError, match=">= 0"):
        sample_miscalibration(rng, -1.0, 0.1)
    for bad in ([], [(10.0, 0.25), (-1.0, 0.1)]):
        with pytest.raises(ValueError, match="ranges must be non-empty"):
            CalibSimDataset(ranges=bad)


def test_quaternions_round_trip_and_angle():
    r = Rotation.from_rotvec([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05], [0.0, np.pi / 2, 0.0]]).as_matrix()
    q = torch.from_numpy(quat_from_matrix(r))
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(quat_to_matrix(q).numpy(), r, atol=1e-12)
    ang = quat_angle(q, q[:1].expand(3, 4)).numpy()
    np.testing.assert_allclose(ang, [0.0, np.linalg.norm([0.1, -0.2, 0.05]), np.pi / 2], atol=1e-5)
    assert quat_angle(q[1], -q[1]).item() == pytest.approx(0.0, abs=1e-5)  # q and -q: the same rotation


def test_depth_image_keeps_the_nearest_point_per_pixel():
    pts = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0],  # the same pixel (7, 3): the nearest wins
                        [1.0, 0.0, 10.0],  # pixel (8, 3)
                        [0.0, 0.0, -3.0], [50.0, 0.0, 1.0],  # behind the camera, outside the image
                        [0.0, 0.0, 100.0]], dtype=torch.float64)  # beyond max_depth
    d = depth_image(pts, CAM, max_depth=80.0, min_depth=0.5)
    assert d.shape == (2, 8, 16)
    assert d[1].sum() == 2
    assert d[0, 3, 7] == pytest.approx(0.5 / 2.0) and d[0, 3, 8] == pytest.approx(0.5 / 10.0)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        depth_image(pts[:, :2], CAM)


def test_depth_image_intensity_channel_is_the_nearest_points():
    pts = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0], [1.0, 0.0, 10.0], [0.0, 0.0, -3.0]], dtype=torch.float64)
    d = depth_image(pts, CAM, intensity=torch.tensor([0.9, 0.2, 0.7, 1.0]))
    assert d.shape == (3, 8, 16)
    assert d[2, 3, 7] == pytest.approx(0.2) and d[2, 3, 8] == pytest.approx(0.7)  # the nearest of two; the far one
    assert d[2].sum() == pytest.approx(0.9)  # nothing from the point behind the camera
    torch.testing.assert_close(d[:2], depth_image(pts, CAM))  # the depth channels are unchanged
    with pytest.raises(ValueError, match="intensity must be"):
        depth_image(pts, CAM, intensity=torch.zeros(3))
    # any per-point values [N, C]: C more channels, of the nearest point, after the others
    v = torch.tensor([[0.1, 1.0], [0.2, 2.0], [0.3, 3.0], [0.4, 4.0]], dtype=torch.float64)
    e = depth_image(pts, CAM, intensity=torch.tensor([0.9, 0.2, 0.7, 1.0]), values=v)
    assert e.shape == (5, 8, 16)
    torch.testing.assert_close(e[:3], d)
    assert e[3:, 3, 7].tolist() == [0.2, 2.0] and e[3:, 3, 8].tolist() == [0.3, 3.0] and e[4].sum() == 5.0
    with pytest.raises(ValueError, match="values must be"):
        depth_image(pts, CAM, values=v[:3])


def test_depth_image_subpixel_channels_place_the_nearest_point_inside_its_pixel():
    pts = torch.tensor([[0.03, 0.0, 4.0], [-0.04, 0.0, 2.0],  # both round to pixel (7, 3); the nearest is 0.2 px left
                        [1.0, 0.1, 10.0]], dtype=torch.float64)  # (8, 3.1)
    d = depth_image(pts, CAM, intensity=torch.tensor([0.9, 0.2, 0.7]), subpixel=True)
    assert d.shape == (5, 8, 16)
    assert d[3, 3, 7] == pytest.approx(-0.2) and d[4, 3, 7] == pytest.approx(0.0)
    assert d[3, 3, 8] == pytest.approx(0.0) and d[4, 3, 8] == pytest.approx(0.1)
    assert d[3:].abs().sum() == pytest.approx(0.3)  # nothing where no point is
    torch.testing.assert_close(d[:3], depth_image(pts, CAM, intensity=torch.tensor([0.9, 0.2, 0.7])))
    # a shift of a third of a pixel leaves the rounded channels as they were, and shows in the sub-pixel ones
    moved = pts + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) * pts[:, 2:] / 30.0  # fx 10: u + 1/3
    e = depth_image(moved, CAM, subpixel=True)
    torch.testing.assert_close(e[:2], d[:2])
    torch.testing.assert_close(e[2] - d[3], torch.where(d[1] > 0, 1 / 3, 0.0).to(e.dtype))


def test_intensities_are_checked_and_scaled_to_unit_range():
    img = torch.zeros(3, 8, 16)
    x = CalibInput("t", img, CAM, np.ones((2, 3)), np.eye(4), np.array([0.1, 0.5]))
    assert x.intensity.dtype == np.float32
    with pytest.raises(ValueError, match="intensity must be finite"):
        CalibInput("t", img, CAM, np.ones((2, 3)), np.eye(4), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="intensity must be finite"):
        CalibInput("t", img, CAM, np.ones((2, 3)), np.eye(4), np.array([0.1]))
    np.testing.assert_allclose(unit_intensity(np.array([0.0, 0.4, 1.0])), [0.0, 0.4, 1.0])  # KITTI: kept
    np.testing.assert_allclose(unit_intensity(np.array([0.0, 51.0, 255.0])), [0.0, 0.2, 1.0])  # 8-bit
    np.testing.assert_allclose(unit_intensity(np.array([0.0, 1000.0, 4000.0])), [0.0, 0.25, 1.0])  # larger: by max
    pts, n_bad = finite_points(np.array([[1.0, 2.0, 3.0, 0.5], [1.0, 2.0, 3.0, np.nan]]), columns=4)
    assert n_bad == 1 and pts.shape == (1, 4)


def test_local_correlation_matches_a_direct_sum():
    torch.manual_seed(0)
    a, b = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    c = local_correlation(a, b, heads=2, window=1)  # [2, 2*9, 5, 6]
    assert c.shape == (2, 18, 5, 6)
    for g, (dy, dx), (y, x) in [(0, (0, 0), (2, 3)), (1, (-1, 1), (2, 3)), (1, (1, -1), (4, 0))]:
        ch = g * 9 + (dy + 1) * 3 + (dx + 1)
        yy, xx = y + dy, x + dx
        want = (a[0, g * 4:(g + 1) * 4, y, x] * b[0, g * 4:(g + 1) * 4, yy, xx]).sum() / 2.0 if 0 <= yy < 5 and 0 <= xx < 6 else 0.0
        assert c[0, ch, y, x].item() == pytest.approx(float(want), abs=1e-5)
    with pytest.raises(ValueError, match="heads"):
        local_correlation(a, b, heads=3, window=1)


def test_inputs_reject_bad_points_and_count_non_finite():
    img = torch.zeros(3, 8, 16)
    with pytest.raises(ValueError, match="non-finite"):
        CalibInput("t", img, CAM, np.array([[0.0, np.nan, 1.0]]), np.eye(4))
    with pytest.raises(ValueError, match="no LiDAR points"):
        CalibInput("t", img, CAM, np.zeros((0, 3)), np.eye(4))
    with pytest.raises(ValueError, match=r"init must be a finite \[4, 4\]"):
        CalibInput("t", img, CAM, np.ones((2, 3)), np.eye(3))
    with pytest.raises(ValueError, match="does not match"):
        CalibInput("t", torch.zeros(3, 9, 16), CAM, np.ones((2, 3)), np.eye(4))
    pts, n_bad = finite_points(np.array([[1.0, 2.0, 3.0, 0.5], [np.inf, 0.0, 0.0, 0.1], [0.0, 0.0, np.nan, 0.0]]))
    assert n_bad == 2 and pts.shape == (1, 3)


@pytest.fixture(scope="module")
def sim_pairs():
    """Camera-LiDAR pairs of one rendered synthetic frame (the 3 front pinholes), miscalibrated +-10 deg / 0.25 m."""
    return CalibSimDataset(seeds=[7], frames=1, size=(64, 32), max_points=4000, fixed_seed=0)


def test_pairs_from_a_synthetic_frame(sim_pairs):
    assert len(sim_pairs) == 3
    s = sim_pairs[1]
    assert s.inputs.image.shape == (3, 32, 64) and s.inputs.camera.width == 64
    assert 0 < len(s.inputs.points) <= 4000
    # the perturbation is deterministic per index, and within the range it was drawn from
    again = sim_pairs[1]
    np.testing.assert_array_equal(s.inputs.init, again.inputs.init)
    corr = Miscalibration.between(s.inputs.init, s.target.cam_from_lidar)
    assert 0 < corr.angle_deg <= 10.0 * np.sqrt(3) and np.abs(corr.translation).max() <= 0.25
    # through the true extrinsic, the sparse depth agrees with the rendered frame: most points land in the image
    truth = s.target.cam_from_lidar
    pts = torch.from_numpy(s.inputs.points).double() @ torch.from_numpy(truth[:3, :3]).T + torch.from_numpy(truth[:3, 3])
    assert depth_image(pts, s.inputs.camera)[1].mean() > 0.2


def test_calib_input_from_a_frame_uses_the_frame_calibration(sim_pairs):
    from perception.sim.scene import SimConfig, SimSequence

    frame = SimSequence(7, SimConfig(frames=1, rigs=("navsim",)))[0].frame
    x, n_bad = calib_input(frame, "CAM_F0", (64, 32), max_points=1000)
    np.testing.assert_allclose(x.init, frame.calib.transform("CAM_F0", "LIDAR_TOP").matrix)
    assert n_bad == 0 and len(x.points) == 1000 and x.intensity is None
    with pytest.raises(KeyError, match="no image from camera"):
        calib_input(frame, "CAM_B0", (64, 32))
    # with intensities: the same points, each with its own intensity (lane markings bright, road dark)
    xi, _ = calib_input(frame, "CAM_F0", (64, 32), max_points=1000, intensity=True)
    np.testing.assert_array_equal(xi.points, x.points)
    xi, _ = calib_input(frame, "CAM_F0", (64, 32), max_points=1000, intensity=True, deskew=False)  # as measured
    cloud = frame.lidar["LIDAR_TOP"]
    assert xi.intensity.shape == (1000,) and 0.0 <= xi.intensity.min() and xi.intensity.max() <= 1.0
    by_point = dict(zip(map(tuple, cloud.points[:, :3]), cloud.points[:, cloud.fields.index("intensity")]))
    assert all(by_point[tuple(p)] == pytest.approx(i) for p, i in zip(xi.points[:20], xi.intensity[:20]))
    from dataclasses import replace

    bare = replace(frame, lidar={"LIDAR_TOP": replace(cloud, points=cloud.points[:, :3], fields=("x", "y", "z"))})
    with pytest.raises(ValueError, match="reads LiDAR intensity"):
        calib_input(bare, "CAM_F0", (64, 32), intensity=True)


@pytest.fixture(scope="module")
def driving_frame():
    """A rendered synthetic frame of a car driving at > 5 m/s (so 50 ms of sweep is more than 25 cm) among moving
    road users: the sample and CAM_F0's rendered depth."""
    from perception.sim.scene import SimConfig, SimSequence

    smp = SimSequence(7, SimConfig(frames=1, rigs=("navsim",)))[0]
    assert smp.frame.meta["ego_speed"] > 5.0
    return smp, smp.targets.depth["CAM_F0"].depth


def _depth_error(x, depth):
    """Mean |z - rendered depth| at the points' pixels through the input's extrinsic (clipped at 2 m; surfaces within
    40 m)."""
    p = x.points.astype(np.float64) @ x.init[:3, :3].T + x.init[:3, 3]
    uv, ok = x.camera.project(p)
    ok &= x.camera.in_image(uv) & (p[:, 2] > 1)
    u, v = np.floor(uv[ok]).astype(int).T
    z, ref = p[ok, 2], depth[v, u]
    near = (ref > 0) & (ref < 40)
    return float(np.minimum(np.abs(z[near] - ref[near]), 2.0).mean())


def test_calib_input_deskews_the_sweep_to_the_camera_exposure(driving_frame):
    """A spinning LiDAR's sweep, moved to the image's time by the car's odometry, lands where the camera sees the
    world: through the true extrinsic its points agree with the rendered depth better than as measured."""
    from dataclasses import replace

    smp, depth = driving_frame
    frame = smp.frame
    raw, _ = calib_input(frame, "CAM_F0", (640, 360), deskew=False)
    fixed, _ = calib_input(frame, "CAM_F0", (640, 360))
    assert fixed.deskewed and not raw.deskewed
    assert _depth_error(fixed, depth) < 0.85 * _depth_error(raw, depth)
    cloud = frame.lidar["LIDAR_TOP"]
    # without per-point times there is nothing to deskew by: the points stay as measured, and the input says so
    bare = replace(frame, lidar={"LIDAR_TOP": replace(cloud, points=cloud.points[:, :4], fields=cloud.fields[:4])})
    x, _ = calib_input(bare, "CAM_F0", (64, 32), max_points=1000)
    assert not x.deskewed
    np.testing.assert_array_equal(x.points, calib_input(frame, "CAM_F0", (64, 32), max_points=1000, deskew=False)[0].points)


def test_calib_input_leaves_out_and_counts_the_points_on_moving_road_users(driving_frame):
    """Odometry deskews the static world, not the other cars: their points stay where they were at each point's time.
    Left out by their labelled boxes and velocities and counted, the points that go disagree with the rendered depth
    twice as much as those that stay; still objects are kept."""
    from dataclasses import replace

    smp, depth = driving_frame
    frame, boxes = smp.frame, smp.targets.boxes.tensor
    assert (np.hypot(boxes[:, 7], boxes[:, 8]) > 0.3).any()
    every, _ = calib_input(frame, "CAM_F0", (640, 360))
    x, _ = calib_input(frame, "CAM_F0", (640, 360), movers=boxes)
    assert x.moving > 50 and len(x.points) + x.moving == len(every.points) and every.moving == 0
    kept = {p.tobytes() for p in x.points}
    gone = replace(every, points=np.array([p for p in every.points if p.tobytes() not in kept]))
    assert len(gone.points) == x.moving
    assert _depth_error(gone, depth) > 1.8 * _depth_error(x, depth)
    still = boxes.copy()
    still[:, 7:9] = 0
    assert calib_input(frame, "CAM_F0", (640, 360), movers=still)[0].moving == 0
    with pytest.raises(ValueError, match="deskewed"):
        calib_input(frame, "CAM_F0", (64, 32), deskew=False, movers=boxes)
    with pytest.raises(ValueError, match="velocities"):
        calib_input(frame, "CAM_F0", (64, 32), movers=boxes[:, :7])


@pytest.mark.parametrize("subpixel", [False, True])
def test_untrained_model_starts_at_the_identity_correction(sim_pairs, subpixel):
    model = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1,
                        dec_layers=1, iterations=2, subpixel=subpixel).eval()
    batch = [sim_pairs[i] for i in range(3)]
    data = model.data_preprocessor(batch)
    depth = model.depth(data["inputs"], data["inputs"].init)
    assert depth.shape == (3, 4 if subpixel else 2, 32, 64)
    if subpixel:  # the offsets inside the pixel, where a point is
        assert depth[:, 2:].abs().max() <= 0.5 and (depth[:, 2:].abs().sum(1) > 0).sum() > 0.9 * depth[:, 1].sum()
    preds = model(**data, mode="predict")
    assert len(preds) == 3 and preds[0].steps.shape == (3, 4, 4)
    for p, s in zip(preds, batch):
        np.testing.assert_allclose(p.cam_from_lidar, s.inputs.init, atol=1e-6)
    with pytest.raises(ValueError, match="true extrinsic"):
        model(data["inputs"], [None] * 3, mode="loss")


def test_model_learns_the_corrections_of_a_few_pairs(sim_pairs):
    """The loss falls and the corrections come closer to the truth (a few pairs, fixed perturbations)."""
    torch.manual_seed(0)
    model = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1,
                        dec_layers=1, iterations=1)
    batch = [sim_pairs[i] for i in range(3)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        data = model.data_preprocessor(batch, True)
        loss = sum(model(**data, mode="loss").values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3])
    model.eval()
    from perception.eval.calibration import before_after

    preds = model(**model.data_preprocessor(batch), mode="predict")
    r = before_after(np.stack([p.init for p in preds]), np.stack([p.cam_from_lidar for p in preds]),
                     np.stack([s.target.cam_from_lidar for s in batch]))
    assert r["rot_reduction"] > 2.0 and r["trans_reduction"] > 2.0


def test_preprocessor_rejects_mixed_sizes_and_wrong_types(sim_pairs):
    model = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1)
    s = sim_pairs[0]
    other = CalibSample(CalibInput("x", torch.zeros(3, 16, 32), PinholeCamera(width=32, height=16, fx=20.0, fy=20.0,
                                                                               cx=15.5, cy=7.5),
                                   s.inputs.points, s.inputs.init), CalibTarget(np.eye(4)))
    with pytest.raises(ValueError, match="one image size"):
        model.data_preprocessor([s, other])
    with pytest.raises(TypeError, match="CalibSample"):
        model.data_preprocessor([s.inputs])


def test_flow_targets_and_pnp_recover_a_known_correction(sim_pairs):
    """With the true displacement field (each 1/4 cell: where its points really are in the image), the PnP step
    recovers the true extrinsic from the miscalibrated one; the decoder's translation is kept with pnp='rotation'."""
    batch = [sim_pairs[i] for i in range(3)]
    for pnp in ("full", "rotation"):
        model = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1,
                            dec_layers=1, flow=True, pnp=pnp)
        data = model.data_preprocessor(batch)
        b = data["inputs"]
        q_gt, t_gt, gt = model.targets(b, data["data_samples"])
        flow, hit = model.flow_targets(b, gt, 8, 16)
        assert flow.shape == (3, 2, 8, 16) and hit.float().mean() > 0.3
        # a cell's target is the mean image displacement of its points between the two extrinsics
        uv0, ok0 = model._projections(b.points[0], b.cameras[0], b.init[0])
        uv1, ok1 = model._projections(b.points[0], b.cameras[0], gt[0])
        ok = ok0 & ok1
        cell = (uv0[ok, 1] + 0.5).mul(8 / 32).long() * 16 + (uv0[ok, 0] + 0.5).mul(16 / 64).long()
        c = int(cell.mode().values)
        np.testing.assert_allclose(flow[0].reshape(2, -1)[:, c].numpy(),
                                   (uv1[ok] - uv0[ok])[cell == c].mean(0).numpy(), rtol=1e-5, atol=1e-4)
        logb = torch.where(hit, 0.0, 30.0).float()
        identity = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1)
        est = model.pnp_refine(b, b.init, identity, t_gt if pnp == "rotation" else torch.zeros_like(t_gt), flow, logb)
        for e, g, i in zip(est.numpy(), gt.numpy(), b.init.numpy()):
            before, after = Miscalibration.between(i, g), Miscalibration.between(e, g)
            assert after.angle_deg < 0.05 * before.angle_deg
            assert np.abs(after.translation).max() < (0.04 if pnp == "full" else 1e-6)  # cell means at 64x32
    with pytest.raises(ValueError, match="pnp"):
        CalibFormer(pnp="icp")


def test_cascade_runs_its_stages_in_turn_and_trains_one(sim_pairs, tmp_path):
    """Stage 2 starts from stage 1's estimate; ``init_from`` starts both from one CalibFormer's weights; the loss
    trains only ``train_stage``."""
    from perception.models.calibformer.cascade import CalibCascade

    torch.manual_seed(0)
    kw = dict(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1, iterations=2)
    single = CalibFormer(**kw)
    for p in single.parameters():  # away from the identity start, so each stage moves the estimate
        p.data.add_(0.05 * torch.randn_like(p))
    torch.save({"state_dict": single.state_dict()}, tmp_path / "stage1.pth")
    cascade = CalibCascade([kw, dict(kw, iterations=1)], train_stage=1, init_from=str(tmp_path / "stage1.pth")).eval()
    single.eval().requires_grad_(False)  # frozen as the cascade's stages (torch's transformer fast path then)
    batch = [sim_pairs[i] for i in range(3)]
    data = cascade.data_preprocessor(batch)
    preds = cascade(**data, mode="predict")
    assert preds[0].steps.shape == (4, 4, 4) and cascade.iterations == 3
    from dataclasses import replace

    with torch.no_grad():  # stage 1 alone (the same weights), then stage 2 from its estimate
        first = single.refine(data["inputs"])
        second = single.refine(replace(data["inputs"], init=first[-1]), 1)
    np.testing.assert_allclose(np.stack([p.cam_from_lidar for p in preds]), second[-1].numpy(), atol=1e-6)
    assert not np.allclose(preds[0].cam_from_lidar, preds[0].init, atol=1e-4)

    cascade.train()
    opt = torch.optim.AdamW([p for p in cascade.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in cascade.stages[0].parameters()]
    moved = [p.detach().clone() for p in cascade.stages[1].parameters()]
    loss = sum(cascade(**cascade.data_preprocessor(batch, True), mode="loss").values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, cascade.stages[0].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(moved, cascade.stages[1].parameters()))
    with pytest.raises(ValueError, match="train_stage"):
        CalibCascade([kw], train_stage=2)


def test_an_intensity_stage_starts_as_the_depth_only_network_it_is_loaded_from(sim_pairs, tmp_path):
    """``init_from`` a depth-only checkpoint: the intensity channel's weights start at zero, so the stage predicts
    what the depth-only network does; it then trains them. Without intensities in the inputs: a clear error."""
    from perception.models.calibformer.cascade import CalibCascade

    torch.manual_seed(0)
    kw = dict(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1, iterations=1)
    single = CalibFormer(**kw)
    for p in single.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    torch.save({"state_dict": single.state_dict()}, tmp_path / "depth_only.pth")
    cascade = CalibCascade([dict(kw, intensity=True)], init_from=str(tmp_path / "depth_only.pth")).eval()
    single.eval()
    assert cascade.reads_intensity and not single.reads_intensity
    assert cascade.stages[0].depth_net.stages[0][0][0].weight.shape[1] == 3
    with pytest.raises(ValueError, match="needs the points' intensities"):
        cascade(**cascade.data_preprocessor([sim_pairs[0]]), mode="predict")
    frames = CalibSimDataset(seeds=[7], frames=1, size=(64, 32), max_points=4000, fixed_seed=0, intensity=True)
    batch = [frames[i] for i in range(3)]
    np.testing.assert_array_equal(batch[1].inputs.points, sim_pairs[1].inputs.points)
    data = cascade.data_preprocessor(batch)
    assert data["inputs"].intensity is not None and cascade.stages[0].depth(data["inputs"], data["inputs"].init).shape[1] == 3
    with torch.no_grad():
        want = single.refine(data["inputs"])[-1].numpy()
    np.testing.assert_allclose(np.stack([p.cam_from_lidar for p in cascade(**data, mode="predict")]), want, atol=1e-6)
    cascade.train()
    first = cascade.stages[0].depth_net.stages[0][0][0].weight
    loss = sum(cascade(**cascade.data_preprocessor(batch, True), mode="loss").values())
    loss.backward()
    assert first.grad[:, 2].abs().sum() > 0  # the intensity channel learns


@pytest.mark.parametrize("config, weights", [
    ("calibformer_cascade_sim_cpu.py", "calibformer_flow_sim_cpu.safetensors"),
    ("calibformer_cascade_jitter_sim_cpu.py", "calibformer_flow_jitter_narrow_sim_cpu.safetensors"),
])
def test_cascade_config_starts_both_stages_from_the_tracked_weights(config, weights):
    from mmengine.config import Config

    from perception.engine.checkpoint import load_checkpoint
    from perception.models.calibformer.calibrate import ROOT

    cfg = Config.fromfile(ROOT / "configs/calibformer" / config)
    model = cfg.model.type(**{k: v for k, v in cfg.model.items() if k != "type"})
    released = load_checkpoint(ROOT / "checkpoints" / weights)["state_dict"]
    for stage in model.stages:
        assert all(torch.equal(stage.state_dict()[k], v) for k, v in released.items())
    assert [p.requires_grad for p in (next(s.parameters()) for s in model.stages)] == [False, True]


def test_fine_correlation_stacks_half_resolution_blocks_into_quarter_cells():
    from perception.models.calibformer.model import FineCorrelation

    fine = FineCorrelation(3, 2, width=8, heads=2, window=1, out=4)
    for (h, w), size in (((32, 64), (8, 16)), ((34, 66), (9, 17))):  # a 1/2 map of odd size is padded to tile
        assert fine(torch.randn(2, 3, h, w), torch.randn(2, 2, h, w), size).shape == (2, 4, *size)
    assert fine.proj[0].in_channels == 4 * 2 * 9  # each 1/4 cell holds its 2x2 blocks of 2 heads x 3x3 offsets
    with pytest.raises(ValueError, match="needs flow=True"):
        CalibFormer(fine=True)


def test_a_fine_stage_starts_as_the_network_it_is_loaded_from_and_its_branch_learns(sim_pairs, tmp_path):
    """Loaded from a network without the fine branch, a ``fine=True`` stage gives that network's displacements
    (the head's new input channels start at zero) until it trains; the branch gets gradients from the loss."""
    from perception.models.calibformer.cascade import CalibCascade

    torch.manual_seed(0)
    kw = dict(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1,
              iterations=1, flow=True)
    single = CalibFormer(**kw)
    for p in single.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    torch.save({"state_dict": single.state_dict()}, tmp_path / "plain.pth")
    cascade = CalibCascade([dict(kw, fine=True)], init_from=str(tmp_path / "plain.pth")).eval()
    single.eval()
    b = cascade.data_preprocessor([sim_pairs[i] for i in range(3)])["inputs"]
    with torch.no_grad():
        want = single.heads(b.image, single.depth(b, b.init), b.cameras)
        got = cascade.stages[0].heads(b.image, cascade.stages[0].depth(b, b.init), b.cameras)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)
    cascade.train()
    loss = sum(cascade(**cascade.data_preprocessor([sim_pairs[i] for i in range(3)], True), mode="loss").values())
    loss.backward()
    assert cascade.stages[0].flow_head[0].weight.grad[:, -32:].abs().sum() > 0  # the head starts reading the branch
    with pytest.raises(RuntimeError, match="missing"):  # anything else missing from the checkpoint is an error
        torch.save({"state_dict": {k: v for k, v in single.state_dict().items() if not k.startswith("flow_head")}},
                   tmp_path / "no_head.pth")
        CalibCascade([dict(kw, fine=True)], init_from=str(tmp_path / "no_head.pth"))


def test_median_spread_is_the_standard_error_of_the_median_per_axis():
    from perception.models.calibformer.calibrate import median_correction, median_spread

    rng = np.random.default_rng(0)
    t = rng.normal(0, [0.01, 0.02, 0.04], (4001, 3))  # 1, 2, 4 cm
    angles = rng.normal(0, [0.1, 0.2, 0.4], (4001, 3))  # deg
    corr = [Miscalibration(Rotation.from_rotvec(np.radians(a)).as_matrix(), x) for a, x in zip(angles, t)]
    sd = median_spread(corr)
    expected = 1.2533 * np.array([0.1, 0.2, 0.4, 1.0, 2.0, 4.0]) / np.sqrt(4001)  # of a Gaussian sample's median
    np.testing.assert_allclose(sd, expected, rtol=0.06)
    # it is the scatter of the median itself: 40 groups of 100, their medians' std against the groups' spread
    groups = [corr[i::40] for i in range(40)]
    meds = np.stack([median_correction(g).translation * 100 for g in groups])
    np.testing.assert_allclose(meds.std(0), np.mean([median_spread(g)[3:] for g in groups], 0), rtol=0.3)
    with pytest.raises(ValueError, match="2 corrections"):
        median_spread(corr[:1])
