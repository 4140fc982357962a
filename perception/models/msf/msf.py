"""MSF: the two-stage detector — a frozen CenterPoint RPN, motion-guided pooling, the MSF head.

He, Li, Zhang, Li & Zhang, "MSF: Motion-guided Sequential Fusion for Efficient 3D Object Detection from
Point Cloud Sequences", CVPR 2023 (arXiv:2303.08316). Per frame of the batch:

1. the RPN (:class:`CenterPointRPN`, trained first and frozen here, as the paper trains its two
   stages) proposes boxes with velocities on the current frame; rotated BEV NMS (mmcv) keeps the
   best ``num_proposals``;
2. each proposal is propagated back to the ``frames - 1`` earlier sweeps along its velocity
   (:func:`propagate`) and the points around it are pooled from every frame with the voxel-hash
   sampler :func:`perception.ops.proposal_pool.proposal_point_pool` (cylinders, box-frame xyz);
3. :class:`MSFHead` refines each proposal and predicts its IoU with the ground truth;
4. detections are ranked by ``rpn_score^(1-a) * iou^a`` (IoU-guided scoring, ``a = score_alpha``)
   and de-duplicated by rotated NMS per class.

Training (``mode="loss"``): proposals are matched to the ground truth of their class by 3D IoU
(mmdet3d's ``LiDARInstance3DBoxes.overlaps``); the IoU branch learns ``clamp((IoU - 0.25) / 0.5)``
with binary cross-entropy on every proposal, the residuals a smooth-L1 on those with IoU >= ``fg_iou``.
Jittered copies of the ground truth join the proposals (``gt_proposals`` per frame) so the head sees
foreground from the first step, a standard two-stage practice. A frame with fewer earlier sweeps
than ``frames - 1`` (a sequence's start) pools nothing there (masked).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from perception.engine.checkpoint import load_checkpoint, load_weights
from perception.eval.waymo import iou_3d
from perception.models.msf.msf_head import MSFHead, decode_residuals, encode_residuals, point_features, propagate
from perception.models.msf.rpn import CenterPointRPN, PointBatch, PointPreprocessor
from perception.ops.proposal_pool import proposal_point_pool
from perception.structures import Boxes3D, Detections, Targets

__all__ = ["MSF"]


def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by per-class rotated NMS on the BEV footprints of ``boxes [N, >=7]`` (mmcv), best first."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    from mmcv.ops import nms_rotated

    bev = boxes[:, [0, 1, 3, 4, 6]].float().contiguous()
    _, keep = nms_rotated(bev, scores.float().contiguous(), iou, labels=labels)
    return keep


class MSF(BaseModel):
    """Multi-frame detector: ``PointBatch`` (with ``history``) → losses / ``list[Detections]``.

    Args:
        rpn: keyword dict of :class:`CenterPointRPN` (its ``grid``, ``point_fields`` and ``sweeps`` are
            the model's input too).
        head: keyword dict of :class:`MSFHead` (``in_channels`` and ``frames`` are filled in).
        frames: ``T``, the current frame and ``T - 1`` earlier sweeps.
        rpn_checkpoint: the trained RPN's weights (``.pth`` / ``.safetensors``); ``None`` leaves them
            to a later ``load_state_dict`` (a trained MSF checkpoint holds them).
        max_points: ``P`` points pooled per proposal per frame, a seeded uniform subset of the points
            inside (fresh seeds in training, a fixed one in inference: deterministic, and the same
            spatial distribution in both; the first ``P`` in sensor order would be one scan line).
        radius_scale / z_margin: the pooling cylinder around a proposal (see :func:`proposal_point_pool`);
            ``z_margin`` is added above the box only, and the lowest ``ground_clearance`` metres of the
            box are left out: that is the road the object stands on, which otherwise outnumbers it.
    """

    def __init__(self, rpn: dict, head: dict | None = None, frames: int = 4, rpn_checkpoint: str | None = None,
                 num_proposals: int = 64, proposal_nms_iou: float = 0.7, max_points: int = 32,
                 radius_scale: float = 1.3, z_margin: float = 0.5, ground_clearance: float = 0.2,
                 fg_iou: float = 0.55, gt_proposals: int = 16,
                 score_alpha: float = 0.5, nms_iou: float = 0.3, max_detections: int = 100) -> None:
        rpn_cfg = {k: v for k, v in rpn.items() if k != "type"}
        super().__init__(data_preprocessor=PointPreprocessor(
            rpn_cfg["grid"], rpn_cfg.get("point_fields", ("x", "y", "z", "intensity")),
            sweeps=rpn_cfg.get("sweeps", 0), history=frames))
        self.rpn = CenterPointRPN(**rpn_cfg)
        if not self.rpn.with_velocity:
            raise ValueError("MSF: the RPN must predict velocity (with_velocity=True) to propagate proposals")
        if rpn_checkpoint is not None:
            self.load_rpn(rpn_checkpoint)
        self.rpn.requires_grad_(False)
        self.classes = self.rpn.classes
        self.frames = int(frames)
        self.fields = self.rpn.point_fields
        extra = len(self.fields) - 3
        self.head = MSFHead(in_channels=3 + 24 + extra + 3, frames=self.frames, **(head or {}))
        self.num_proposals, self.proposal_nms_iou = int(num_proposals), float(proposal_nms_iou)
        self.max_points, self.radius_scale, self.z_margin = int(max_points), float(radius_scale), float(z_margin)
        self.ground_clearance = float(ground_clearance)
        self.fg_iou, self.gt_proposals = float(fg_iou), int(gt_proposals)
        self.score_alpha, self.nms_iou, self.max_detections = float(score_alpha), float(nms_iou), int(max_detections)
        g = self.rpn.grid
        self.xy_range = (g.x_min, g.y_min, g.x_max, g.y_max)

    def load_rpn(self, path: str) -> None:
        """Load the stage-1 weights; a missing file says how to make it."""
        from pathlib import Path

        if not Path(path).is_file():
            raise FileNotFoundError(f"MSF: RPN checkpoint {path} not found; train stage 1 first "
                                    "(python tools/train.py configs/msf/rpn_sim_cpu.py) or set model.rpn_checkpoint")
        state = load_checkpoint(path)["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        load_weights(self.rpn, state, strict=True)

    def train(self, mode: bool = True) -> "MSF":
        super().train(mode)
        self.rpn.eval()  # frozen stage 1: BatchNorm statistics stay as trained
        return self

    # ------------------------------------------------------------------------------------------
    def proposals(self, inputs: PointBatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per frame ``(boxes [K, 9], scores [K], labels [K])`` from the frozen RPN after rotated NMS."""
        with torch.no_grad():
            dets = self.rpn.decode(self.rpn.extract(inputs))
        out = []
        for d in dets:
            boxes = torch.from_numpy(d.boxes.tensor)
            scores, labels = torch.from_numpy(d.scores), torch.from_numpy(d.boxes.labels)
            keep = rotated_nms(boxes, scores, labels, self.proposal_nms_iou)[: self.num_proposals]
            out.append((boxes[keep], scores[keep], labels[keep]))
        return out

    def _jittered_gt(self, t: Targets, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``gt_proposals`` ground-truth boxes inside the grid, perturbed: ``[M, 9]``, labels ``[M]``."""
        b = torch.from_numpy(t.boxes.tensor)
        if b.shape[1] == 7:
            b = torch.cat([b, b.new_zeros(len(b), 2)], 1)
        labels = torch.from_numpy(t.boxes.labels)
        x0, y0, x1, y1 = self.xy_range
        ok = (labels >= 0) & (b[:, 0] > x0) & (b[:, 0] < x1) & (b[:, 1] > y0) & (b[:, 1] < y1)
        if "num_lidar_pts" in t.attributes:
            ok &= torch.from_numpy(np.asarray(t.attributes["num_lidar_pts"]) > 0)
        idx = ok.nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=gen)[: self.gt_proposals]]
        b, labels = b[idx].clone(), labels[idx]
        n = len(b)
        b[:, :2] += torch.randn(n, 2, generator=gen) * 0.15 * b[:, 3:5].norm(dim=1, keepdim=True)
        b[:, 2] += torch.randn(n, generator=gen) * 0.1 * b[:, 5]
        b[:, 3:6] *= torch.exp(torch.randn(n, 3, generator=gen) * 0.1)
        b[:, 6] += torch.randn(n, generator=gen) * 0.15
        b[:, 7:9] += torch.randn(n, 2, generator=gen) * 0.5
        return b, labels

    def pool(self, history: Sequence[torch.Tensor], lags: Sequence[float], boxes: torch.Tensor,
             seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Point features ``[T, K, P, F]`` and mask ``[T, K, P]`` of proposals ``boxes [K, 9]`` in one frame's history."""
        T, C = self.frames, len(self.fields)
        steps = list(history[:T]) + [history[0].new_zeros(0, C)] * (T - len(history))
        lag = torch.tensor(list(lags[:T]) + [0.0] * (T - len(lags)), dtype=torch.float32)
        props = propagate(boxes.float(), lag)  # [T, K, 7]
        region = props.clone()  # the cylinder: from ground_clearance above the bottom to z_margin above the top
        region[..., 2] += self.ground_clearance
        region[..., 5] = (region[..., 5] - self.ground_clearance + self.z_margin).clamp(min=0.1)
        pooled = proposal_point_pool(steps, region, radius_scale=self.radius_scale, z_margin=0.0,
                                     max_points=self.max_points, canonical=True, seed=seed)
        pooled.points[..., 2] += self.ground_clearance  # box frame of the proposal itself (bottom centre)
        c, s = torch.cos(boxes[:, 6]).float(), torch.sin(boxes[:, 6]).float()
        d = props[..., :2] - boxes[None, :, :2].float()  # [T, K, 2] world-aligned shift → box frame
        shift = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)
        feats = point_features(pooled.points[..., :3], pooled.points[..., 3:], boxes[:, 3:6].float(), shift, lag)
        mask = pooled.mask
        if len(history) < T:
            mask[len(history):] = False
        return feats.masked_fill(~mask[..., None], 0.0), mask

    def _head(self, inputs: PointBatch, props: list[tuple[torch.Tensor, ...]], training: bool):
        feats, masks = [], []
        for b, (boxes, _, _) in enumerate(props):
            seed = int(torch.randint(0, 2**31 - 1, (1,))) if training else 0
            f, m = self.pool(inputs.history[b], inputs.time_lags[b], boxes, seed)
            feats.append(f)
            masks.append(m)
        return self.head(torch.cat(feats, 1), torch.cat(masks, 1))

    # ------------------------------------------------------------------------------------------
    def forward(self, inputs: PointBatch, data_samples: list[Targets | None] | None = None, mode: str = "tensor"):
        if mode not in ("tensor", "loss", "predict"):
            raise ValueError(f"MSF: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
        if inputs.history is None:
            raise ValueError("MSF: inputs need per-frame history (use MSF's own data preprocessor)")
        props = self.proposals(inputs)
        if mode == "loss":
            if data_samples is None or any(t is None for t in data_samples):
                raise ValueError("MSF.loss: every sample needs targets")
            return self.loss(inputs, props, data_samples)
        if sum(len(p[0]) for p in props) == 0:
            res, iou = torch.zeros(0, 8), torch.zeros(0)
        else:
            res, iou = self._head(inputs, props, training=False)
        if mode == "tensor":
            return props, res, iou
        return self.decode(props, res, iou)

    def loss(self, inputs: PointBatch, props, targets: list[Targets]) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        all_props, iou_t, res_t = [], [], []
        for (boxes, scores, labels), t in zip(props, targets):
            jb, jl = self._jittered_gt(t, gen)
            boxes, labels = torch.cat([boxes, jb]), torch.cat([labels, jl])
            scores = torch.cat([scores, scores.new_ones(len(jb))])
            gt = torch.from_numpy(t.boxes.tensor)
            iou = torch.from_numpy(iou_3d(boxes.numpy(), gt.numpy())).float()  # [K, M]
            iou = iou * (labels[:, None] == torch.from_numpy(t.boxes.labels)[None]).float()  # same class only
            best, arg = iou.max(1) if iou.shape[1] else (torch.zeros(len(boxes)), torch.zeros(len(boxes), dtype=torch.long))
            all_props.append((boxes, scores, labels))
            iou_t.append(best)
            res_t.append(encode_residuals(boxes.float(), gt[arg].float()) if gt.shape[0] else torch.zeros(len(boxes), 8))
        iou_t, res_t = torch.cat(iou_t), torch.cat(res_t)
        if len(iou_t) == 0:
            zero = sum(p.sum() * 0.0 for p in self.head.parameters())
            return {"loss_iou": zero, "loss_reg": zero}
        res, logit = self._head(inputs, all_props, training=True)
        loss_iou = F.binary_cross_entropy_with_logits(logit, ((iou_t - 0.25) / 0.5).clamp(0, 1))
        fg = iou_t >= self.fg_iou
        if fg.any():
            loss_reg = F.smooth_l1_loss(res[fg], res_t[fg], beta=1.0 / 9.0, reduction="sum") / fg.sum()
        else:
            loss_reg = res.sum() * 0.0
        return {"loss_iou": loss_iou, "loss_reg": loss_reg}

    def decode(self, props, res: torch.Tensor, iou_logit: torch.Tensor) -> list[Detections]:
        """Refined, IoU-scored, NMS-ed detections per frame (``Boxes3D [N, 9]`` with the RPN's velocity)."""
        out, start = [], 0
        for boxes, scores, labels in props:
            k = len(boxes)
            r, q = res[start:start + k], torch.sigmoid(iou_logit[start:start + k])
            start += k
            refined = torch.cat([decode_residuals(boxes.float(), r.float()), boxes[:, 7:9].float()], 1)
            score = scores.float().clamp(min=1e-6) ** (1 - self.score_alpha) * q.float() ** self.score_alpha
            keep = rotated_nms(refined, score, labels, self.nms_iou)[: self.max_detections]
            tensor = refined[keep].detach().numpy()
            tensor[:, 3:6] = np.maximum(tensor[:, 3:6], 0.0)
            out.append(Detections(Boxes3D(tensor, labels[keep].numpy(), self.classes, "ego"), score[keep].detach().numpy()))
        return out
