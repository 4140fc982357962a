"""GaussianFusion: inputs, attention masking, losses, anchors, the cascade head, and that the model learns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perception.geometry.grid import BevGrid
from perception.geometry.se3 import SE3
from perception.models.gaussian_fusion import features as FT
from perception.models.gaussian_fusion.gaussians import bev_to_grid
from perception.models.gaussian_fusion.losses import lovasz_softmax
from perception.models.gaussian_fusion.model import GaussianFusion
from perception.models.planning.anchors import kmeans_anchors
from perception.models.planning.cascade_head import CascadePlanningHead
from perception.models.planning.kinematics import limit_acceleration
from perception.sim import world as W
from perception.sim.sensors import navsim_front_rig
from perception.structures import (
    Boxes3D, Calibration, CameraImage, EgoPose, Frame, PointCloud, Sample, Targets, Trajectory,
)

GRID = BevGrid(-16.0, -16.0, 16.0, 16.0, 1.0)
SRC_GRID = BevGrid(-20.0, -20.0, 20.0, 20.0, 0.5)
T8 = 0.5 * np.arange(1, 9)


def arc(speed: float, yaw_rate: float) -> np.ndarray:
    """``[8, 3]`` poses driving an arc at constant speed and yaw rate."""
    h = yaw_rate * T8
    if abs(yaw_rate) < 1e-6:
        return np.column_stack([speed * T8, np.zeros(8), h])
    r = speed / yaw_rate
    return np.column_stack([r * np.sin(h), r * (1 - np.cos(h)), h])


def make_sample(i: int, speed: float, yaw_rate: float, command: int, drop: tuple[str, ...] = ()) -> Sample:
    """A small frame: 3 front cameras (32x64), a LiDAR whose points trace the road ahead, the ego future."""
    rng = np.random.default_rng(i)
    rig = navsim_front_rig(64, 36)
    calib = Calibration(ego_from_sensor={"LIDAR_TOP": SE3.identity(), **{c.name: c.ego_from_camera for c in rig}},
                        cameras={c.name: c.model for c in rig})
    future = arc(speed, yaw_rate)
    # the road: ground points along the future path, obstacles beside it
    s = np.linspace(0, 1, 400)
    path = np.column_stack([np.interp(s * 7, np.arange(8), future[:, 0]), np.interp(s * 7, np.arange(8), future[:, 1])])
    road = np.concatenate([path + rng.normal(0, 1.0, path.shape), np.zeros((len(path), 1))], 1)
    walls = np.concatenate([path + [0, 4.0], np.full((len(path), 1), 1.0)], 1)
    pts = np.concatenate([road, walls]).astype(np.float32)
    pts = np.column_stack([pts, np.ones(len(pts), np.float32)])
    cams = {c.name: CameraImage((rng.random((36, 64, 3)) * 255).astype(np.uint8) + np.uint8(command * 40),
                                c.model, 1.0, c.name) for c in rig if c.name not in drop}
    lidar = {} if "lidar" in drop else {"LIDAR_TOP": PointCloud(pts, ("x", "y", "z", "intensity"), 1.0, "LIDAR_TOP")}
    frame = Frame(token=f"t{i}", timestamp=1.0, calib=calib, lidar=lidar, cameras=cams,
                  ego_pose=EgoPose(1.0, SE3.identity()), missing=drop,
                  meta={"ego_speed": speed, "ego_acceleration": 0.0, "ego_yaw_rate": yaw_rate})
    bev = np.full(SRC_GRID.shape, W.TERRAIN, np.uint8)
    for dy in np.arange(-2.0, 2.01, 0.5):  # a 4 m wide road along the path
        ij, inside = SRC_GRID.index(path + [0.0, dy])
        bev[ij[inside, 0], ij[inside, 1]] = W.ROAD
    targets = Targets(boxes=Boxes3D(np.zeros((0, 7), np.float32), np.zeros(0, np.int64), W.BOX_CLASSES),
                      ego_future=Trajectory(future, T8), driving_command=command, bev_semantic=bev,
                      meta={"bev_grid": SRC_GRID})
    return Sample(frame, targets)


def tiny_model(anchors: np.ndarray, **kw) -> GaussianFusion:
    torch.manual_seed(0)
    cfg = dict(lidar_grid=GRID, map_grid=GRID, image_size=(32, 64), num_gaussians=48, dim=32, heads=4, blocks=1,
               image_widths=(8, 16, 32), lidar_widths=(8, 16, 32), points=2, anchors=anchors,
               num_anchors=len(anchors), knn=8, sensor_dropout=0.0)
    cfg.update(kw)
    return GaussianFusion(**cfg)


# --- inputs --------------------------------------------------------------------------------------------
def test_lidar_histogram_counts_splits_clips_and_counts_nonfinite():
    pts = np.array([[0.2, 0.2, 0.0], [0.2, 0.2, 0.1], [0.2, 0.2, 1.0], [5.5, -3.5, 2.0], [np.nan, 0, 0],
                    [100.0, 0, 0], [0.2, 0.2, 5.0]] + [[-8.5, 8.5, 0.0]] * 9, np.float32)
    h, bad = FT.lidar_histogram(pts, GRID)
    assert bad == 1
    i, j = GRID.index(np.array([[0.2, 0.2]]))[0][0]
    assert h[0, i, j] == pytest.approx(2 / FT.HIST_MAX) and h[1, i, j] == pytest.approx(1 / FT.HIST_MAX)  # 5 m: above MAX_HEIGHT
    i2, j2 = GRID.index(np.array([[-8.5, 8.5]]))[0][0]
    assert h[0, i2, j2] == 1.0  # 9 points clip at HIST_MAX
    assert h.sum() == pytest.approx((2 + 1 + 1) / FT.HIST_MAX + 1.0)  # the point at 100 m is outside


def test_camera_projection_puts_a_point_ahead_in_the_front_image():
    s = make_sample(0, 5.0, 0.0, 1)
    img, proj, ok = FT.camera_input(s.frame, "CAM_F0", (32, 64))
    assert ok and img.shape == (3, 32, 64)
    uvw = proj @ torch.tensor([20.0, 0.0, 1.6, 1.0])  # straight ahead at the camera's height
    u, v = (uvw[:2] / uvw[2]).tolist()
    assert abs(u - 31.5) < 1.0 and 0 < v < 32  # centre column (the camera pitches 2 degrees down)
    left = proj @ torch.tensor([5.0, 10.0, 1.0, 1.0])
    assert left[2] < 0 or not (0 <= (left[0] / left[2]) <= 63)  # far to the left: not in the front view


def test_missing_sensors_are_zeros_and_flagged():
    s = make_sample(1, 5.0, 0.0, 1, drop=("CAM_L0", "lidar"))
    x = FT.build_inputs([s.frame], [1], GRID, (32, 64))
    assert x.camera_valid.tolist() == [[False, True, True]]
    assert not x.lidar_valid[0] and x.lidar_bev.abs().sum() == 0 and x.images[0, 0].abs().sum() == 0
    assert x.ego_status[0].tolist() == pytest.approx([5.0, 0, 0, 0, 0, 1, 0, 0])


def test_bev_target_maps_world_classes_and_ignores_outside():
    s = make_sample(2, 5.0, 0.0, 1)
    t = FT.bev_target(s.targets, BevGrid(-32.0, -32.0, 32.0, 32.0, 1.0))
    assert set(torch.unique(t).tolist()) == {0, 1, FT.IGNORE}  # terrain → background, road → road
    assert (t[:12] == FT.IGNORE).all()  # x < -20 m is outside the source map
    no_map = Targets(boxes=s.targets.boxes)
    assert (FT.bev_target(no_map, GRID) == FT.IGNORE).all()


def test_bev_to_grid_matches_grid_sample_layout():
    xy = torch.tensor([[GRID.x_min, GRID.y_min], [GRID.x_max, GRID.y_max], [0.0, 0.0]])
    g = bev_to_grid(xy, GRID)
    assert g.tolist() == [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]
    fmap = torch.zeros(1, 1, *GRID.shape)
    i, j = GRID.index(np.array([[3.5, -7.5]]))[0][0]
    fmap[0, 0, i, j] = 1.0
    v = torch.nn.functional.grid_sample(fmap, bev_to_grid(torch.tensor([[[[3.5, -7.5]]]]), GRID), align_corners=False)
    assert float(v) == pytest.approx(1.0)


# --- losses, anchors, head ------------------------------------------------------------------------------
def test_lovasz_softmax_zero_when_perfect_and_positive_otherwise():
    labels = torch.tensor([0, 0, 1, 2, 255])
    perfect = torch.nn.functional.one_hot(labels.clamp(max=2), 3).T.float()
    assert float(lovasz_softmax(perfect, labels)) == pytest.approx(0.0)
    wrong = perfect[[1, 2, 0]]
    assert float(lovasz_softmax(wrong, labels)) == pytest.approx(1.0)  # every class's IoU is 0
    # one class half right: class 0's Jaccard loss with errors sorted (1, 0) → grad (0.5, 0.5) → 0.5
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(lovasz_softmax(p, torch.tensor([0, 0]))) == pytest.approx(0.5)
    assert float(lovasz_softmax(perfect, torch.full((5,), 255))) == 0.0


def test_kmeans_anchors_recovers_clusters_and_rejects_bad_input():
    rng = np.random.default_rng(0)
    centres = [arc(v, w) for v, w in ((5, 0), (10, 0.2), (10, -0.2))]
    trajs = np.concatenate([c + rng.normal(0, 0.05, (30, 8, 3)) for c in centres])
    a = kmeans_anchors(trajs, k=3)
    for c in centres:
        assert np.abs(a[:, :, :2] - c[:, :2]).max(axis=(1, 2)).min() < 0.1
    with pytest.raises(ValueError, match="distinct"):
        kmeans_anchors(np.repeat(trajs[:1], 5, 0), k=3)
    bad = trajs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        kmeans_anchors(bad, k=3)


def test_cascade_head_refines_the_nearest_anchor():
    anchors = np.stack([arc(5, 0), arc(10, 0.2), arc(10, -0.2)]).astype(np.float32)
    head = CascadePlanningHead(anchors, dim=32, heads=4, stages=2, knn=4)
    tokens, means = torch.randn(2, 10, 32), torch.randn(2, 10, 2) * 10
    outs = head(tokens, means, torch.zeros(2, 8))
    assert len(outs) == 2 and outs[0][0].shape == (2, 3) and outs[1][1].shape == (2, 3, 8, 3)
    assert torch.allclose(outs[0][1], torch.from_numpy(anchors)[None].expand(2, -1, -1, -1), atol=1e-6)  # zero-init delta
    gt = torch.from_numpy(np.stack([arc(10, 0.2), arc(5, 0)])).float()
    losses = head.loss(outs, gt, torch.tensor([True, False]))
    assert losses["loss_traj_s0"].item() < 1e-5  # the nearest anchor is the ground truth itself
    assert losses["loss_cls_s0"].item() > 0
    best, cands, scores = head.select(outs)
    assert best.shape == (2, 8, 3) and scores.shape == (2, 3)
    with pytest.raises(ValueError, match="anchors"):
        CascadePlanningHead(np.zeros((3, 8)))


# --- the model --------------------------------------------------------------------------------------------
def _anchors() -> np.ndarray:
    return np.stack([arc(v, w) for v in (4.0, 8.0) for w in (-0.25, 0.0, 0.25)]).astype(np.float32)


def test_missing_sensors_still_give_a_finite_plan():
    model = tiny_model(_anchors()).eval()
    samples = [make_sample(3, 6.0, 0.1, 0), make_sample(4, 6.0, 0.0, 1, drop=("CAM_F0",)),
               make_sample(5, 6.0, 0.0, 1, drop=("lidar",)), make_sample(6, 6.0, 0.0, 1, drop=("lidar", "CAM_L0", "CAM_F0", "CAM_R0"))]
    outs = model.plan([s.frame for s in samples], [s.targets.driving_command for s in samples])
    assert [o.missing for o in outs] == [(), ("CAM_F0",), ("lidar",), ("CAM_L0", "CAM_F0", "CAM_R0", "lidar")]
    for o in outs:
        assert np.isfinite(o.plan.trajectory.poses).all() and o.plan.trajectory.poses.shape == (8, 3)
        assert len(o.plan.candidates) == 6 and len(o.gaussians) == 48 and o.bev_semantic.shape == GRID.shape


def test_gaussian_fusion_learns_to_plan_and_map():
    """Loss falls and the chosen plan's displacement error falls on a handful of scenes (it learns, not just runs)."""
    samples = [make_sample(10 + k, v, w, c) for k, (v, w, c) in
               enumerate([(8.0, 0.25, 0), (8.0, 0.0, 1), (8.0, -0.25, 2), (4.0, 0.0, 1)])]
    anchors = _anchors()
    anchors[:, :, :2] *= 0.8  # no anchor is exact: the regression has work to do
    model = tiny_model(anchors)
    gt = np.stack([s.targets.ego_future.poses for s in samples])

    def ade() -> float:
        model.eval()
        with torch.no_grad():
            outs = model.plan([s.frame for s in samples], [s.targets.driving_command for s in samples])
        model.train()
        return float(np.mean([np.linalg.norm(o.plan.trajectory.poses[:, :2] - g[:, :2], axis=1).mean()
                              for o, g in zip(outs, gt)]))

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ade0, first, last = ade(), None, None
    for step in range(60):
        data = model.data_preprocessor(samples, training=True)
        losses = model(data["inputs"], data["data_samples"], mode="loss")
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else {k: float(v) for k, v in losses.items()}
        last = {k: float(v) for k, v in losses.items()}
    assert sum(last.values()) < 0.5 * sum(first.values())
    assert last["loss_map_ce"] < first["loss_map_ce"]  # the map branch learns through gaussian_splat_bev
    assert ade() < 0.5 * ade0


def test_limit_acceleration_retimes_along_the_path():
    hard = np.column_stack([5 * T8 + 1.5 * T8 ** 2, np.zeros(8), np.zeros(8)])  # 3 m/s^2 from 5 m/s
    out = limit_acceleration(hard, 0.5, 5.0, -4.0, 2.0)
    v = np.diff(np.concatenate([[0.0], out[:, 0]])) / 0.5
    assert np.allclose(np.diff(v) / 0.5, 2.0) and out[-1, 0] < hard[-1, 0]  # capped at 2 m/s^2, so it falls behind
    steady = np.column_stack([5 * T8, np.zeros(8), np.zeros(8)])
    assert np.allclose(limit_acceleration(steady, 0.5, 5.0, jerk=1.0), steady)  # nothing to limit
    turn = arc(8.0, 0.3)
    slow = limit_acceleration(turn, 0.5, 0.0, -4.0, 1.0)  # from standstill: the same arc, driven later
    r = 8.0 / 0.3
    assert np.allclose(np.hypot(slow[:, 0], slow[:, 1] - r), r, atol=0.1)  # on the circle (within the chords)
    assert slow[-1, 2] < turn[-1, 2]
    with pytest.raises(ValueError, match="finite"):
        limit_acceleration(np.full((8, 3), np.nan), 0.5, 5.0)


@pytest.mark.parametrize("name", ["gaussian_fusion_sim_cpu", "gaussian_fusion_sim"])
def test_configs_build_and_plan(name):
    """Both config sizes build from their files (anchors come with a checkpoint) and plan one frame."""
    from mmengine.config import Config

    from perception.pipeline.model_stage import build_model

    root = Path(__file__).resolve().parents[2]
    cfg = Config.fromfile(str(root / f"configs/gaussian_fusion/{name}.py"))
    spec = dict(cfg.model, anchors=None)
    model = build_model(spec).eval()
    s = make_sample(30, 7.0, 0.0, 1)
    out = model.plan([s.frame], [1])[0]
    assert out.plan.trajectory.poses.shape == (8, 3) and np.isfinite(out.plan.trajectory.poses).all()
    assert len(out.gaussians) == spec["num_gaussians"] and len(out.plan.candidates) == spec["num_anchors"]
