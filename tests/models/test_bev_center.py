"""BevCenterNet: pillar features are what they claim, bad points are counted, and the model learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.data.dataset import SimDataset, collate_samples
from perception.eval.detection import centre_distance_map
from perception.geometry.se3 import SE3
from perception.models.bev_center import BevCenterNet, BevPillarPreprocessor
from perception.structures import Calibration, Frame, PointCloud, Sample

GRID = dict(x_min=-20.0, y_min=-20.0, x_max=20.0, y_max=20.0, resolution=0.5)


def frame_with(points: np.ndarray) -> Frame:
    calib = Calibration({"lidar": SE3.from_rt(np.eye(3), [0.0, 0.0, 1.0])})  # LiDAR 1 m above the ego origin
    pc = PointCloud(points.astype(np.float32), ("x", "y", "z", "intensity"), 0.0, "lidar")
    return Frame(token="t", timestamp=0.0, calib=calib, lidar={"lidar": pc})


def test_pillar_features_and_counted_bad_points():
    pts = np.array([[1.1, 2.2, 0.0, 0.5], [1.2, 2.3, 1.0, 0.7],  # two points in cell (42, 44), ego z 1 and 2
                    [np.nan, 0.0, 0.0, 0.1], [100.0, 0.0, 0.0, 0.1]])  # non-finite, outside the grid
    pre = BevPillarPreprocessor(GRID, z_range=(-1.0, 4.0))
    feats, n_bad, n_out = pre.pillars(frame_with(pts))
    assert (n_bad, n_out) == (1, 1)
    assert feats.shape == (6, 80, 80)
    i, j = 42, 44
    assert feats[0].sum() == 1 and feats[0, i, j] == 1
    assert feats[1, i, j] == pytest.approx(np.log(3.0))
    assert feats[2:6, i, j].tolist() == pytest.approx([1.5, 2.0, 1.0, 0.6])


def test_model_learns_on_synthetic_frames():
    torch.manual_seed(0)
    ds = SimDataset(seeds=(3,), frames=2)
    batch = collate_samples([ds[0], ds[1]])
    model = BevCenterNet(GRID, ds.metainfo["classes"], z_range=(-1.0, 4.0), width=16)
    data = model.data_preprocessor(batch, True)
    opt = torch.optim.Adam(model.parameters(), 3e-3)

    def evaluate() -> float:
        model.eval()
        dets = model(**data, mode="predict")
        model.train()
        return centre_distance_map([(d, s.targets.boxes) for d, s in zip(dets, batch)], ds.metainfo["classes"],
                                   max_distance=20.0)["mAP"]

    ap0 = evaluate()
    first = None
    for _ in range(120):
        loss = sum(model(**data, mode="loss").values())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first, (first, loss.item())
    ap1 = evaluate()
    assert ap1 > ap0 + 0.3 and ap1 > 0.5, (ap0, ap1)


def test_loss_needs_targets_and_mode_is_checked():
    model = BevCenterNet(GRID, ("Car",))
    ds = SimDataset(seeds=(3,), frames=1)
    data = model.data_preprocessor([ds[0]])
    with pytest.raises(ValueError, match="targets"):
        model(data["inputs"], [None], mode="loss")
    with pytest.raises(ValueError, match="mode"):
        model(data["inputs"], mode="bogus")
    with pytest.raises(TypeError, match="list\\[Sample\\]"):
        model.data_preprocessor([1, 2])
    assert isinstance(ds[0], Sample)
