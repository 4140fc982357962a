"""CalibFormer's learned appearance alignment: point appearance, targets, the correlation objective, the bounded
L-BFGS alignment, and the aligned model's training and prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from perception.eval.calibration import calibration_errors
from perception.geometry.cameras import PinholeCamera
from perception.models.calibformer.align import (AppearanceNet, CalibAligned, align, align_frames, appearance_loss,
                                                 appearance_targets, correlation, point_appearance)
from perception.models.calibformer.data import CalibSimDataset
from perception.models.calibformer.geometry import Miscalibration

TINY = dict(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1,
            iterations=1, intensity=True)


@pytest.fixture(scope="module")
def sim_pairs():
    """Camera-LiDAR pairs of one rendered synthetic frame (the 3 front pinholes) with intensities."""
    return CalibSimDataset(seeds=[7], frames=1, size=(64, 32), max_points=4000, fixed_seed=0, intensity=True)


def test_point_appearance_marks_the_near_side_of_depth_edges_and_intensity_changes():
    # a wall 10 m ahead (x forward) and a post 5 m ahead in front of part of it, on a fine grid of directions
    az, el = np.meshgrid(np.linspace(-0.2, 0.2, 41), np.linspace(-0.1, 0.1, 21))
    d = np.stack([np.ones_like(az), np.tan(az), np.tan(el)], -1).reshape(-1, 3)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    post = np.abs(d[:, 1] / d[:, 0]) < 0.03
    r = np.where(post, 5.0, 10.0)
    inten = np.where(d[:, 2] > 0, 0.8, 0.1)  # bright upper half
    a = point_appearance(d * r[:, None], inten, k=8)
    assert a.shape == (len(d), 3) and a.dtype == np.float32
    edge_of_post = post & (np.abs(d[:, 1] / d[:, 0]) > 0.015)
    assert a[edge_of_post, 0].min() == 1.0  # 5 m jump at 5 m: beyond 0.3 r
    assert a[~post, 0].max() < 1e-6  # the wall (a sphere of 10 m here) is never in front of anything
    assert a[np.abs(d[:, 1]) > 0.1, 0].max() < 1e-6
    near_row = np.abs(d[:, 2]) < 0.006
    assert a[near_row, 1].min() == 1.0 and a[np.abs(d[:, 2]) > 0.05, 1].max() == 0.0
    np.testing.assert_allclose(a[:, 2], inten, atol=1e-6)
    no_int = point_appearance(d * r[:, None], None)
    assert (no_int[:, 1:] == 0).all() and (no_int[:, 0] == a[:, 0]).all()
    with pytest.raises(ValueError, match="intensity"):
        point_appearance(d * r[:, None], inten[:5])
    with pytest.raises(ValueError, match="points"):
        point_appearance(np.zeros((4, 2)))


def test_appearance_targets_keep_the_nearest_point_per_pixel():
    cam = PinholeCamera(width=8, height=4, fx=4.0, fy=4.0, cx=3.5, cy=1.5)
    pts = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 2.0], [2.0, 0.0, 4.0], [0.0, 0.0, -3.0]], dtype=torch.float64)
    app = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.0, 1.0]])
    t = appearance_targets(pts, app, cam, torch.eye(4, dtype=torch.float64))
    assert t.shape == (4, 4, 8)
    assert t[0].sum() == 2  # the first two share a pixel; the last is behind the camera
    row, col = 2, 4  # round(3.5 + 0) = 4, round(1.5) = 2
    np.testing.assert_allclose(t[1:, row, col].numpy(), [0.4, 0.5, 0.6])  # the nearer one
    np.testing.assert_allclose(t[1:, 2, 6].numpy(), [0.7, 0.8, 0.9])  # u = 3.5 + 4 * 0.5 = 5.5 -> 6


@pytest.fixture(scope="module")
def two_frames():
    """Two frames of one sequence's front camera (one extrinsic), with intensities."""
    ds = CalibSimDataset(seeds=[7], frames=2, cameras=("CAM_F0",), size=(128, 64), max_points=4000, fixed_seed=0,
                         intensity=True)
    return [ds[0], ds[1]]


def truth_maps(s):
    """Maps as a perfect AppearanceNet would predict them for pair ``s``: the true projections' appearance, with
    the holes between points filled from their neighbours."""
    pts = torch.from_numpy(s.inputs.points).double()
    app = torch.from_numpy(point_appearance(s.inputs.points, s.inputs.intensity))
    t = appearance_targets(pts, app, s.inputs.camera, torch.tensor(s.target.cam_from_lidar))
    k = torch.ones(1, 1, 3, 3)
    num = torch.nn.functional.conv2d(t[1:, None] * t[:1, None], k, padding=1)[:, 0]
    den = torch.nn.functional.conv2d(t[None, :1], k, padding=1)[0]
    return torch.where(t[:1] > 0, t[1:], num / den.clamp_min(1)), pts, app


def test_alignment_to_the_true_maps_recovers_a_known_miscalibration(sim_pairs):
    s = sim_pairs[1]
    maps, pts, app = truth_maps(s)
    truth = s.target.cam_from_lidar
    off = Miscalibration(Rotation.from_euler("xyz", [1.0, -1.5, 1.0], degrees=True).as_matrix(),
                         np.array([0.0, 0.06, 0.0]))
    start = torch.from_numpy(off.apply(truth))
    est, taken = align(maps, pts, app, s.inputs.camera, start)
    assert taken
    before = calibration_errors(start.numpy()[None], truth[None])
    after = calibration_errors(est.numpy()[None], truth[None])
    assert after["rot_geodesic_deg"][0] < 0.4 * before["rot_geodesic_deg"][0]
    assert after["trans_norm_cm"][0] < before["trans_norm_cm"][0]
    # the correlation is higher at the truth than at the start, and the update stays within its bounds
    t = torch.tensor(truth)
    assert correlation(maps.double(), pts, app.double(), s.inputs.camera, t[:3, :3], t[:3, 3]) > \
        correlation(maps.double(), pts, app.double(), s.inputs.camera, start[:3, :3], start[:3, 3])
    assert np.abs(est.numpy()[:3, 3] - start.numpy()[:3, 3]).max() <= 0.15 + 1e-9


def test_alignment_refuses_what_it_cannot_improve(sim_pairs):
    s = sim_pairs[0]
    maps, pts, app = truth_maps(s)
    start = torch.tensor(s.target.cam_from_lidar)
    flat = torch.zeros_like(maps)  # nothing to align to: the correlation cannot rise
    est, taken = align(flat, pts, app, s.inputs.camera, start)
    assert not taken and torch.equal(est, start)
    behind = pts * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # no point in front of the camera
    est, taken = align(maps, behind @ start[:3, :3], app, s.inputs.camera, torch.eye(4, dtype=torch.float64))
    assert not taken and torch.equal(est, torch.eye(4, dtype=torch.float64))


def test_appearance_net_keeps_the_image_size_and_its_loss_masks_empty_pixels():
    net = AppearanceNet((4, 8, 8, 8))
    out = net(torch.randn(2, 3, 24, 40))
    assert out.shape == (2, 3, 24, 40)
    targets = torch.zeros(2, 4, 24, 40)
    assert appearance_loss(out, targets) == 0  # no pixel with a point: nothing to learn from
    targets[:, 0, 5, 5], targets[:, 3, 5, 5] = 1, 0.5
    assert appearance_loss(out, targets) > 0


def test_aligned_model_trains_only_its_maps_and_predicts_after_the_network(sim_pairs, tmp_path):
    torch.manual_seed(0)
    from perception.models.calibformer.model import CalibFormer

    ckpt = tmp_path / "net.pth"
    net = CalibFormer(**TINY)
    torch.save({"state_dict": net.state_dict()}, ckpt)
    model = CalibAligned(dict(TINY), init_from=str(ckpt), widths=(8, 16, 16, 16))
    for k, v in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v), k
    assert model.reads_intensity and model.iterations == 2
    frozen = {k: v.clone() for k, v in model.network.state_dict().items()}
    batch = [sim_pairs[i] for i in range(3)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    assert not model.network.training
    losses = []
    for _ in range(40):
        loss = model(**model.data_preprocessor(batch, True), mode="loss")["loss_appearance"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    model.eval()
    preds = model(**model.data_preprocessor(batch), mode="predict")
    assert len(preds) == 3 and all(p.steps.shape == (3, 4, 4) for p in preds)
    net_preds = net.eval()(**net.data_preprocessor(batch), mode="predict")
    for p, q in zip(preds, net_preds):
        np.testing.assert_allclose(p.steps[:2], q.steps, atol=1e-9)  # the network's steps, then the alignment
        assert isinstance(p.aligned, bool) and q.aligned is None  # taken or refused; the network has none
        assert np.isfinite(p.cam_from_lidar).all()
    with pytest.raises(ValueError, match="true extrinsic"):
        model(model.data_preprocessor(batch)["inputs"], [None] * 3, mode="loss")


def test_aligned_config_starts_from_the_released_network_and_trains_only_the_maps():
    from mmengine.config import Config

    from perception.engine.checkpoint import load_checkpoint
    from perception.models.calibformer.calibrate import RELEASED, ROOT

    cfg = Config.fromfile(ROOT / "configs/calibformer/calibformer_align_jitter_sim_cpu.py")
    model = cfg.model.type(**{k: v for k, v in cfg.model.items() if k != "type"})
    released = load_checkpoint(RELEASED[1])["state_dict"]
    assert released.keys() == model.network.state_dict().keys()
    assert all(torch.equal(model.network.state_dict()[k], v) for k, v in released.items())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"appearance"}


def test_alignment_rejects_mismatched_inputs(sim_pairs):
    s = sim_pairs[0]
    maps, pts, app = truth_maps(s)
    start = torch.tensor(s.target.cam_from_lidar)
    with pytest.raises(ValueError, match="blur level"):
        align(maps, pts, app, s.inputs.camera, start, sigmas=())
    with pytest.raises(ValueError, match="appearance"):
        align(maps[:2], pts, app, s.inputs.camera, start)
    with pytest.raises(ValueError, match="start"):
        align(maps, pts, app, s.inputs.camera, start[:3])


def test_joint_alignment_moves_one_extrinsic_for_all_frames(two_frames):
    truth = two_frames[0].target.cam_from_lidar
    np.testing.assert_allclose(two_frames[1].target.cam_from_lidar, truth)
    frames = [(m, p, a, s.inputs.camera) for s in two_frames for m, p, a in [truth_maps(s)]]
    off = Miscalibration(Rotation.from_euler("xyz", [1.0, -1.5, 1.0], degrees=True).as_matrix(),
                         np.array([0.0, 0.06, 0.0]))
    start = torch.from_numpy(off.apply(truth))
    est, taken = align_frames(frames, start)
    assert taken
    before = calibration_errors(start.numpy()[None], truth[None])
    after = calibration_errors(est.numpy()[None], truth[None])
    assert after["rot_geodesic_deg"][0] < 0.4 * before["rot_geodesic_deg"][0]
    assert after["trans_norm_cm"][0] < before["trans_norm_cm"][0]
    # one frame listed twice is that frame's own alignment: the objective is the mean over the frames
    one, _ = align(*frames[0][:3], frames[0][3], start)
    twice, _ = align_frames([frames[0], frames[0]], start)
    np.testing.assert_allclose(twice.numpy(), one.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="no frames"):
        align_frames([], start)
    with pytest.raises(ValueError, match="appearance"):
        align_frames([frames[0], (frames[1][0][:2],) + frames[1][1:]], start)


def test_aligned_model_aligns_a_sequence_and_counts_refusals(two_frames, tmp_path, monkeypatch):
    from perception.models.calibformer.model import CalibFormer

    ckpt = tmp_path / "net.pth"
    torch.save({"state_dict": CalibFormer(**TINY).state_dict()}, ckpt)
    model = CalibAligned(dict(TINY), init_from=str(ckpt), widths=(8, 16, 16, 16)).eval()
    truth = two_frames[0].target.cam_from_lidar
    start = torch.from_numpy(Miscalibration(Rotation.from_euler("xyz", [0.5, 1.0, -1.0], degrees=True).as_matrix(),
                                            np.zeros(3)).apply(truth))
    batch = model.data_preprocessor(two_frames)["inputs"]
    perfect = torch.stack([truth_maps(s)[0] for s in two_frames]).float()
    assert model.maps(batch.image).shape == perfect.shape  # the network's own maps, as probabilities
    monkeypatch.setattr(model, "maps", lambda image: perfect)
    est, taken = model.align_sequence(batch, start)
    assert taken and model.refused == 0
    errs = calibration_errors(np.stack([start.numpy(), est.numpy()]), np.stack([truth, truth]))["rot_geodesic_deg"]
    assert errs[1] < 0.4 * errs[0]
    monkeypatch.setattr(model, "maps", lambda image: torch.zeros_like(perfect))  # nothing to align to
    est, taken = model.align_sequence(batch, start)
    assert not taken and model.refused == 1 and torch.equal(est, start.double())


def _plane_frames(shifts_px, stripes=False):
    """Frames of one camera seeing points on two planes (5 m and 20 m, so offsets and rotations differ) whose
    appearance is a smooth pattern, with maps of that pattern as a perfect network would predict them, shifted
    by ``shifts_px`` (u) per frame; ``stripes``: a pattern that varies down the image only."""
    cam = PinholeCamera(width=96, height=64, fx=60.0, fy=60.0, cx=47.5, cy=31.5)
    rng = np.random.default_rng(0)
    uv = rng.uniform([4, 4], [92, 60], (3000, 2))
    z = np.where(np.arange(3000) % 2 == 0, 5.0, 20.0)
    pts = torch.from_numpy(np.c_[(uv[:, 0] - 47.5) * z / 60, (uv[:, 1] - 31.5) * z / 60, z])
    v, u = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")

    def pattern(u, v):
        return torch.sin(v / 3.0) if stripes else torch.sin(u / 3.0) * torch.cos(v / 4.0) + torch.sin((u + v) / 5.0)

    app = pattern(torch.from_numpy(uv[:, 0] - 0.5), torch.from_numpy(uv[:, 1] - 0.5))[:, None]  # pixel centres
    return [(pattern(u - s, v)[None].double(), pts, app.double(), cam) for s in shifts_px]


def test_alignment_spread_is_zero_for_agreeing_frames_and_follows_their_disagreement():
    from perception.models.calibformer.align import alignment_spread

    truth = torch.eye(4, dtype=torch.float64)
    agree = alignment_spread(_plane_frames([0.0, 0.0, 0.0]), truth)
    assert agree.shape == (6,) and np.all(agree < 1e-6)  # identical frames: no disagreement, no spread
    # frames whose maps disagree by up to a pixel sideways: spread in the yaw (about y) and the sideways offset, far
    # less in the pitch (about x) and the vertical offset (some: the pattern's diagonal term couples u and v)
    side = alignment_spread(_plane_frames([-1.0, 0.0, 0.5, 1.0]), truth)
    assert np.all(np.isfinite(side))
    assert side[3] > 0.05 and side[1] > 0.01  # cm, deg: a pixel is 8 cm at 5 m and 1 deg
    assert side[1] > 10 * side[0] and side[3] > 2 * side[4]
    more = alignment_spread(_plane_frames([-1.0, 0.0, 0.5, 1.0] * 4), truth)  # the same scatter, 4x the frames
    np.testing.assert_allclose(more[[1, 3]], side[[1, 3]] * np.sqrt(3 / 15), rtol=0.05)  # sample cov: (n - 1)
    # a pattern that changes only down the image cannot pin the sideways offset: the correlation is flat there
    stripes = alignment_spread(_plane_frames([0.0, 0.3], stripes=True), truth)
    assert np.isinf(stripes[3]) and np.all(np.isfinite(np.delete(stripes, 3)))
    with pytest.raises(ValueError, match="2 frames"):
        alignment_spread(_plane_frames([0.0]), truth)
    with pytest.raises(ValueError, match="estimate"):
        alignment_spread(_plane_frames([0.0, 1.0]), truth[:3])
