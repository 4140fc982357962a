"""The synthetic world agrees with itself: LiDAR vs depth maps, labels vs points, ego vs road, walls vs compensation."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception.geometry import se3
from perception.geometry.boxes import points_in_boxes
from perception.geometry.motion import motion_compensate
from perception.sim import world as W
from perception.sim.render import lidar_sweep
from perception.sim.scene import LIDAR, SimConfig, SimSequence
from perception.sim.sensors import LIDAR_MOUNT


@pytest.fixture(scope="module")
def seq():
    return SimSequence(7, SimConfig(frames=3, layout="curve", rigs=("navsim", "fisheye")))


@pytest.fixture(scope="module")
def sample(seq):
    return seq[2]


def compensated_world_points(seq, sample):
    """The sweep moved into the world frame with the ego poses interpolated at each point's time."""
    f = sample.frame
    pc = f.lidar[LIDAR]
    t = f.timestamp
    pose_t = np.array([t - 0.1, t])
    world_from_lidar = seq.world_from_ego(pose_t) @ f.calib.ego_from_sensor[LIDAR].matrix
    return motion_compensate(pc.xyz, t + pc.field("time"), pose_t, world_from_lidar, np.eye(4))


def bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    u, v = uv[:, 0], uv[:, 1]
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    h, w = img.shape
    u0, v0 = np.clip(u0, 0, w - 2), np.clip(v0, 0, h - 2)
    a, b = u - u0, v - v0
    q = [img[v0, u0], img[v0, u0 + 1], img[v0 + 1, u0], img[v0 + 1, u0 + 1]]
    return (1 - a) * (1 - b) * q[0] + a * (1 - b) * q[1] + (1 - a) * b * q[2] + a * b * q[3], np.minimum.reduce(q)


def test_lidar_agrees_with_every_camera_depth_map(seq, sample):
    assert_lidar_agrees_with_depth_maps(seq, sample)


def test_jittered_mounts_are_seeded_bounded_and_what_the_frames_carry():
    """``mount_jitter``: each camera off its nominal mount by at most the given angle per axis and shift per axis,
    the same for the same seed, different for another; the frames' calibration is the jittered one, and the
    rendered depth maps agree with the LiDAR through it."""
    cfg = SimConfig(frames=1, layout="curve", rigs=("navsim",), mount_jitter=(10.0, 0.25))
    nominal = {c.name: c.ego_from_camera.matrix for c in SimConfig(rigs=("navsim",)).cameras()}
    mounts = {c.name: c.ego_from_camera.matrix for c in cfg.cameras(7)}
    assert {c.name: c.ego_from_camera.matrix.tolist() for c in cfg.cameras(7)} == {k: v.tolist() for k, v in mounts.items()}
    assert not np.allclose(cfg.cameras(8)[0].ego_from_camera.matrix, mounts["CAM_L0"])
    for name, m in mounts.items():
        d = np.linalg.inv(nominal[name]) @ m  # the offset in camera axes
        angles = np.degrees(Rotation.from_matrix(d[:3, :3]).as_euler("xyz"))
        assert 0.5 < np.abs(angles).max() <= 10.0 + 1e-9 and np.abs(d[:3, 3]).max() <= 0.25 + 1e-12
    assert [c.ego_from_camera.matrix.tolist() for c in cfg.cameras()] == [m.tolist() for m in nominal.values()]
    jseq = SimSequence(7, cfg)
    jsample = jseq[0]
    for name, m in mounts.items():
        np.testing.assert_allclose(jsample.frame.calib.ego_from_sensor[name].matrix, m)
    assert_lidar_agrees_with_depth_maps(jseq, jsample)
    with pytest.raises(ValueError, match=">= 0"):
        SimConfig(rigs=("navsim",), mount_jitter=(-1.0, 0.1)).cameras(7)


def assert_lidar_agrees_with_depth_maps(seq, sample):
    f, tg = sample.frame, sample.targets
    pts_w = compensated_world_points(seq, sample)
    moving = np.linalg.norm(tg.boxes.velocity, axis=1) > 0.05
    ego_from_world = se3.inverse(f.ego_pose.world_from_ego.matrix)
    pts_e = se3.transform_points(ego_from_world, pts_w)
    static = ~tg.boxes.select(moving).points_in_boxes(pts_e).any(axis=1) if moving.any() else np.ones(len(pts_e), bool)
    for cam, dm in tg.depth.items():
        cam_from_ego = f.calib.ego_from_sensor[cam].inverse().matrix
        p_c = se3.transform_points(cam_from_ego, pts_e[static])
        uv, valid = f.calib.cameras[cam].project(p_c)
        d_point = np.linalg.norm(p_c, axis=1) if dm.kind == "range" else p_c[:, 2]
        # inverse depth is (nearly) linear across a pixel on a plane: interpolate it, where all 4 taps have depth
        inv, lo = bilinear(np.where(dm.depth > 0, 1.0 / np.maximum(dm.depth, 1e-6), 0.0), uv[valid])
        ok = lo > 0
        d_map = 1.0 / np.where(ok, inv, 1.0)
        delta = np.abs(d_map - d_point[valid])[ok]
        unoccluded = delta < 0.5
        assert unoccluded.sum() > 2000, (cam, unoccluded.sum())
        assert unoccluded.mean() > 0.8, (cam, unoccluded.mean())
        assert np.median(delta[unoccluded]) < 0.02, (cam, np.median(delta[unoccluded]))


def test_boxes_with_five_points_are_visible(seq, sample):
    f, tg = sample.frame, sample.targets
    pts_w = compensated_world_points(seq, sample)
    pts_e = se3.transform_points(se3.inverse(f.ego_pose.world_from_ego.matrix), pts_w)
    grown = tg.boxes.tensor.copy()
    speed = np.linalg.norm(grown[:, 7:9], axis=1)
    grown[:, 3] += 2 * speed * 0.1 + 0.1  # a moving object was up to 0.1 s behind during the sweep
    grown[:, 4:6] += 0.1
    grown[:, 2] -= 0.05
    counts = points_in_boxes(pts_e, grown).sum(0)
    assert (counts >= 5).sum() >= 5
    assert tg.attributes["visible"][counts >= 5].all()
    # and the recorded per-box counts agree with an independent count (within the sweep-time slack)
    np.testing.assert_array_less(tg.attributes["num_lidar_pts"], counts + 1)


@pytest.mark.parametrize("layout", W.LAYOUTS)
def test_ego_never_leaves_drivable_area(layout):
    for seed in (1, 2):
        seq = SimSequence(seed, SimConfig(frames=40, layout=layout, render_cameras=False))
        times = np.arange(0.0, 40 * 0.1 + 4.0, 0.05)
        st = seq.motion.state(times)
        c, s = np.cos(st[:, 2]), np.sin(st[:, 2])
        # the ego footprint's corners: rear axle → front bumper 3.8 m, rear -1.0 m, half width 1.0 m
        corners = [(3.8, 1.0), (3.8, -1.0), (-1.0, 1.0), (-1.0, -1.0)]
        for a, b in corners:
            xy = np.stack([st[:, 0] + a * c - b * s, st[:, 1] + a * s + b * c], axis=1)
            assert np.isin(seq.world.ground.lookup(xy), W.DRIVABLE).all(), (layout, seed, a, b)
        # plausible kinematics
        assert np.abs(st[:, 4]).max() <= 2.0 + 1e-6 and st[:, 3].min() >= 0
        assert np.abs(st[:, 5]).max() < 1.0  # yaw rate < 1 rad/s


def box_surface_distance(points: np.ndarray, box) -> np.ndarray:
    """Distance of points [N, 3] to the surface of a bottom-centred yaw box (x, y, l, w, h, yaw)."""
    x, y, l, w, h, yaw = box
    d = points[:, :2] - [x, y]
    c, s = np.cos(yaw), np.sin(yaw)
    loc = np.abs(np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c, points[:, 2] - h / 2], axis=1))
    q = loc - [l / 2, w / 2, h / 2]
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    return outside + np.abs(np.minimum(q.max(axis=1), 0))  # outside: to the box; inside: to the nearest face


def test_motion_compensation_straightens_walls():
    seq = SimSequence(3, SimConfig(frames=20, layout="straight", render_cameras=False, range_noise=0.005))
    k = int(np.argmax(seq.ego_states[:, 3]))  # the fastest frame
    t = seq.time(k)
    rng = np.random.default_rng(0)
    pts, _, cls = lidar_sweep(seq.world, seq.world_from_ego, t, seq.pattern, LIDAR_MOUNT.matrix, rng)
    wall = cls == W.BUILDING
    pose_t = np.array([t - 0.1, t])
    world_from_lidar = seq.world_from_ego(pose_t) @ LIDAR_MOUNT.matrix
    comp = motion_compensate(pts[wall, :3], t + pts[wall, 5], pose_t, world_from_lidar, np.eye(4))
    naive = se3.transform_points(world_from_lidar[-1], pts[wall, :3].astype(np.float64))
    buildings = [(s.x, s.y, *s.size, s.yaw) for s in seq.world.static if s.cls == W.BUILDING]

    def residual(p):
        return np.min([box_surface_distance(p, b) for b in buildings], axis=0)

    r_comp, r_naive = residual(comp), residual(naive)
    assert wall.sum() > 1000 and seq.ego_states[k, 3] > 3.0
    rms_comp, rms_naive = np.sqrt(np.mean(r_comp ** 2)), np.sqrt(np.mean(r_naive ** 2))
    assert rms_comp < 0.02, rms_comp
    assert rms_naive > 5 * rms_comp, (rms_naive, rms_comp)  # without compensation the walls are smeared


def test_sweep_size_fields_and_determinism(seq, sample):
    pc = sample.frame.lidar[LIDAR]
    assert 110_000 <= len(pc) <= 130_000, len(pc)
    assert pc.fields == ("x", "y", "z", "intensity", "ring", "time")
    assert -0.1 <= pc.field("time").min() and pc.field("time").max() <= 0
    assert 0 <= pc.field("intensity").min() and pc.field("intensity").max() <= 1
    again = SimSequence(7, SimConfig(frames=3, layout="curve", rigs=("navsim",)))[2]
    assert np.array_equal(again.frame.lidar[LIDAR].points, pc.points)
    assert np.array_equal(again.targets.boxes.tensor, sample.targets.boxes.tensor)
    assert np.array_equal(again.frame.cameras["CAM_F0"].image, sample.frame.cameras["CAM_F0"].image)


def test_ground_truth_is_complete(sample):
    f, tg = sample.frame, sample.targets
    assert set(f.cameras) == {"CAM_L0", "CAM_F0", "CAM_R0", "FISHEYE_FRONT", "FISHEYE_LEFT", "FISHEYE_REAR", "FISHEYE_RIGHT"}
    assert f.cameras["CAM_F0"].image.shape == (360, 640, 3) and f.cameras["FISHEYE_LEFT"].image.shape == (640, 640, 3)
    assert set(tg.depth) == set(f.cameras) == set(tg.semantic)
    assert len(tg.ego_future) == 8 and np.allclose(tg.ego_future.timestamps, np.arange(1, 9) * 0.5)
    assert tg.ego_future.poses[-1, 0] > 5  # drives forward
    assert tg.driving_command in (0, 1, 2)
    assert tg.agent_futures.shape == (len(tg.boxes), 8, 3)
    assert set(np.unique(tg.boxes.labels)) <= {0, 1, 2} and (tg.boxes.track_ids >= 0).all()
    assert tg.bev_semantic.shape == tg.meta["bev_grid"].shape
    # the ego stands on road in its own BEV map, and its front camera sees sky at the top, road at the bottom
    nx, ny = tg.bev_semantic.shape
    assert tg.bev_semantic[nx // 2, ny // 2] in W.DRIVABLE
    sem = tg.semantic["CAM_F0"]
    assert (sem[0] == W.SKY).mean() > 0.3 and np.isin(sem[-1], W.DRIVABLE).mean() > 0.5


def test_moving_agents_move_consistently(seq):
    a, b = seq[0].targets, seq[1].targets
    common, ia, ib = np.intersect1d(a.boxes.track_ids, b.boxes.track_ids, return_indices=True)
    assert len(common) >= 3
    # world displacement of each track over 0.1 s matches its labelled velocity
    wa = a.boxes.transform(seq[0].frame.ego_pose.world_from_ego, "world").tensor[ia]
    wb = b.boxes.transform(seq[1].frame.ego_pose.world_from_ego, "world").tensor[ib]
    np.testing.assert_allclose((wb[:, :2] - wa[:, :2]) / 0.1, 0.5 * (wa[:, 7:9] + wb[:, 7:9]), atol=0.05)
