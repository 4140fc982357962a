"""MSF: proposal propagation, residual coding, the head's grouping/BiFA/masking, and that the head learns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perception.data.dataset import SimDataset
from perception.eval.waymo import iou_3d
from perception.models.msf.msf import MSF, rotated_nms
from perception.models.msf.msf_head import BiFA, MSFHead, decode_residuals, encode_residuals, point_features, propagate

GRID = dict(x_min=-20.0, y_min=-20.0, z_min=-1.0, x_max=20.0, y_max=20.0, z_max=4.0, voxel_size=(0.25, 0.25, 0.25))
RPN = dict(grid=GRID, classes=("Car", "Pedestrian", "Cyclist"), point_fields=("x", "y", "z", "intensity", "time_lag"),
           sweeps=1, encoder=dict(channels=(8, 8, 16, 16), out_channels=16, blocks=1),
           backbone=dict(out_channels=(16, 16), layer_nums=(1, 1), strides=(1, 2)),
           neck=dict(out_channels=(16, 16), upsample_strides=(2, 4)),
           head=dict(shared_channels=16, head_channels=16, max_detections=50, score_threshold=0.0))


def test_propagate_moves_proposals_back_along_their_velocity():
    boxes = torch.tensor([[10.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 5.0, -1.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.8, 0.0, 0.0, 0.0]])
    out = propagate(boxes, torch.tensor([0.0, 0.1, 0.2]))
    assert out.shape == (3, 2, 7)
    assert out[2, 0, :2].tolist() == pytest.approx([9.0, 2.2])  # 0.2 s earlier at 5 m/s forward, -1 m/s left
    assert torch.equal(out[:, 1], boxes[1, :7].expand(3, 7))  # static stays
    assert torch.equal(out[1, :, 2:], boxes[:, 2:7])  # size, height and heading unchanged


def test_residuals_round_trip_and_are_zero_for_the_proposal_itself():
    g = torch.Generator().manual_seed(0)
    props = torch.cat([torch.randn(20, 3, generator=g) * 5, torch.rand(20, 3, generator=g) * 4 + 0.5,
                       (torch.rand(20, 1, generator=g) - 0.5) * 6], 1).double()
    gt = props + torch.randn(20, 7, generator=g).double() * 0.2
    gt[:, 3:6] = gt[:, 3:6].abs() + 0.1
    back = decode_residuals(props, encode_residuals(props, gt))
    assert torch.allclose(back[:, :6], gt[:, :6], atol=1e-9)
    dyaw = torch.atan2(torch.sin(back[:, 6] - gt[:, 6]), torch.cos(back[:, 6] - gt[:, 6]))
    assert dyaw.abs().max() < 1e-9
    assert torch.allclose(encode_residuals(props, props), torch.tensor([0, 0, 0, 0, 0, 0, 0, 1.0]).double().expand(20, 8))


def test_point_features_geometry_and_motion():
    dims = torch.tensor([[4.0, 2.0, 1.0]])
    local = torch.tensor([2.0, 1.0, 0.0]).reshape(1, 1, 1, 3)  # exactly on corner 0 (+l/2, +w/2, bottom)
    f = point_features(local, torch.tensor([[[[0.7]]]]), dims, torch.tensor([[[0.5, -0.25]]]), torch.tensor([0.1]))
    assert f.shape == (1, 1, 1, 3 + 24 + 1 + 3)
    diag = dims.norm()
    assert f[0, 0, 0, :3].tolist() == pytest.approx((local[0, 0, 0] / diag).tolist())
    assert f[0, 0, 0, 3:6].abs().max() == 0  # offset to corner 0 is zero
    assert f[0, 0, 0, 6:9].tolist() == pytest.approx([0.0, 2.0 / float(diag), 0.0])  # corner 1 is at y = -1
    assert f[0, 0, 0, 27:].tolist() == pytest.approx([0.7, 0.1, 0.5, -0.25])


def test_bifa_carries_information_both_ways():
    bifa = BiFA(8)
    h = torch.randn(3, 4, 8, requires_grad=True)
    out = bifa(h)
    w = torch.randn(8)  # (a plain sum of a LayerNorm output has no gradient)
    (g_cur,) = torch.autograd.grad((out[:, 0] * w).sum(), h, retain_graph=True)
    (g_old,) = torch.autograd.grad((out[:, 3] * w).sum(), h)
    assert g_cur[:, 3].abs().sum() > 0  # the oldest group reaches the current one
    assert g_old[:, 0].abs().sum() > 0  # and the current one reaches the oldest
    (g_k,) = torch.autograd.grad((bifa(h)[0] * w).sum(), h)
    assert g_k[1:].abs().sum() == 0


def test_head_ignores_masked_points_and_missing_frames():
    torch.manual_seed(0)
    head = MSFHead(in_channels=10, frames=4, group_size=2, dim=16, heads=2, blocks=2).eval()
    feats = torch.randn(4, 3, 5, 10)
    mask = torch.rand(4, 3, 5) > 0.3
    mask[2:, 1] = False  # proposal 1 has no points in the two oldest frames
    res, iou = head(feats, mask)
    assert res.shape == (3, 8) and iou.shape == (3,)
    noisy = torch.where(mask[..., None], feats, torch.randn_like(feats) * 100)
    res2, iou2 = head(noisy, mask)
    assert torch.allclose(res, res2, atol=1e-5) and torch.allclose(iou, iou2, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of group_size"):
        MSFHead(in_channels=10, frames=4, group_size=3)


def test_rotated_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = torch.tensor([[0, 0, 0, 4, 2, 1.5, 0], [0.2, 0, 0, 4, 2, 1.5, 0.05], [0.2, 0, 0, 0.6, 0.6, 1.7, 0],
                          [10, 0, 0, 4, 2, 1.5, 0]])
    keep = rotated_nms(boxes, torch.tensor([0.5, 0.9, 0.8, 0.3]), torch.tensor([0, 0, 1, 0]), 0.5)
    assert sorted(keep.tolist()) == [1, 2, 3]


@pytest.fixture(scope="module")
def sim_batch():
    ds = SimDataset(seeds=[2], frames=6, sweeps=3)
    return [ds[4], ds[5]]


def test_msf_needs_a_trained_rpn_file_and_velocity(tmp_path):
    with pytest.raises(FileNotFoundError, match="train stage 1 first"):
        MSF(rpn=RPN, rpn_checkpoint=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="velocity"):
        MSF(rpn={**RPN, "with_velocity": False})


def test_msf_head_learns_to_score_proposals(sim_batch):
    """The IoU branch learns: its loss falls and its scores rank fresh proposals by their true IoU.

    (The box residuals learn more slowly; the recorded two-stage run in the README shows their effect.)
    """
    torch.manual_seed(0)
    # proposals: jittered ground truth only (an untrained RPN's are noise, and spconv's threaded CPU
    # sums are not bit-reproducible, which would make this short run's trajectory vary)
    model = MSF(rpn=RPN, frames=4, num_proposals=0, max_points=24, gt_proposals=32,
                head=dict(dim=32, heads=4, blocks=2))
    data = model.data_preprocessor(sim_batch, True)
    assert [len(h) for h in data["inputs"].history] == [4, 4]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(50):
        loss = model(**data, mode="loss")
        total = loss["loss_iou"] + loss["loss_reg"]
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append([loss["loss_iou"].item(), loss["loss_reg"].item()])
    first, last = np.mean(losses[:5], 0), np.mean(losses[-5:], 0)
    assert last[0] < 0.9 * first[0], (first, last)  # IoU loss (soft targets: its floor is their entropy)
    assert np.isfinite(losses).all()
    # fresh jittered copies of the ground truth, never seen in training
    model.eval()
    t = sim_batch[0].targets
    jb, jl = model._jittered_gt(t, torch.Generator().manual_seed(5))
    with torch.no_grad():
        res, logit = model._head(data["inputs"], [(jb, torch.ones(len(jb)), jl), (jb[:0], jb[:0, 0], jl[:0])], False)
    true_iou = iou_3d(jb.numpy(), t.boxes.tensor).max(1)
    corr = np.corrcoef(torch.sigmoid(logit).numpy(), true_iou)[0, 1]
    assert corr > 0.3
    refined = decode_residuals(jb.float(), res)
    assert torch.isfinite(refined).all() and (refined[:, 3:6] > 0).all()
    model.num_proposals = 8
    dets = model(**model.data_preprocessor(sim_batch, False), mode="predict")
    assert len(dets) == 2 and dets[0].boxes.tensor.shape[1] == 9
    assert np.all(np.diff(dets[0].scores) <= 1e-6)  # best first


@pytest.mark.parametrize("name", ["msf_sim_cpu.py", "msf_sim.py"])
def test_msf_configs_build(name):
    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(__file__).resolve().parents[2] / "configs" / "msf" / name))
    spec = dict(cfg.model, rpn_checkpoint=None)
    model = spec.pop("type")(**spec)
    assert isinstance(model, MSF) and model.frames == 4 and model.rpn.with_velocity
    assert model.data_preprocessor.history == 4 and model.data_preprocessor.sweeps == 2
    assert cfg.train_dataloader.dataset.sweeps == 3  # what the head pools from
