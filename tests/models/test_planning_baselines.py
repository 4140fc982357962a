"""NAVSIM's blind baselines: constant velocity and the ego-status MLP."""
import numpy as np
import pytest
import torch

from perception.models.gaussian_fusion import features
from perception.models.planning.baselines import (
    EgoStatusMLP, constant_velocity, ego_status, train_ego_status_mlp,
)


def test_constant_velocity():
    traj = constant_velocity(8.0)
    assert np.allclose(traj.timestamps, 0.5 * np.arange(1, 9))
    assert np.allclose(traj.poses, np.column_stack([4.0 * np.arange(1, 9), np.zeros(8), np.zeros(8)]))
    arc = constant_velocity(10.0, yaw_rate=0.25)  # a 40 m radius: every pose on the circle, 5 m apart
    r = np.hypot(arc.xy[:, 0], arc.xy[:, 1] - 40.0)
    assert np.allclose(r, 40.0) and np.allclose(arc.heading, 0.25 * arc.timestamps)
    assert np.allclose(np.linalg.norm(np.diff(arc.xy, axis=0), axis=1), 2 * 40 * np.sin(0.25 * 0.5 / 2))


def test_ego_status_features():
    f = ego_status(10.0, -1.0, 0.2, 2)
    assert f.shape == (8,) and np.allclose(f, [10, 0, -1, 2, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="command"):
        ego_status(1.0, 0.0, 0.0, 4)


@pytest.fixture
def one_torch_thread():
    # a tiny MLP gains nothing from intra-op threads, and on a busy 2-core machine they spin (100x slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ego_status_mlp_learns_on_sim_frames(one_torch_thread):
    from perception.sim.scene import SimConfig, SimSequence

    seq = SimSequence(2, SimConfig(frames=8, layout="straight", render_cameras=False))
    samples = [seq[k] for k in range(len(seq))]
    x = np.stack([features.ego_status(s.frame, s.targets.driving_command).numpy() for s in samples])
    y = np.stack([s.targets.ego_future.poses for s in samples])
    torch.manual_seed(0)
    model = EgoStatusMLP(hidden=128)
    with torch.no_grad():
        before = torch.nn.functional.l1_loss(model(torch.as_tensor(x)), torch.as_tensor(y, dtype=torch.float32)).item()
    losses = train_ego_status_mlp(model, x, y, epochs=150, lr=1e-3, batch_size=4)
    assert losses[-1] < 0.2 * before, (before, losses[::30])
    plan = model.plan(x[0])
    assert plan.poses.shape == (8, 3) and np.allclose(plan.timestamps, 0.5 * np.arange(1, 9))
    assert np.abs(plan.poses[:, 0] - y[0, :, 0]).mean() < 0.2 * np.abs(y[0, :, 0]).mean()
