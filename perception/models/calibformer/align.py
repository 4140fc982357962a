"""Learned appearance alignment: a last, direct refinement of a CalibFormer estimate.

CalibFormer regresses a correction from a coarse (1/4) correlation; what it leaves is a degree or two and, at the
160x96 training size, all of a 25 cm offset (tools/calib_flow_probe.py: its displacement head does not read shifts of
a few pixels). This step aligns at full resolution instead: :class:`AppearanceNet` predicts from the camera image
what the LiDAR sees at each pixel,

0. ``depth_edge``: the near side of a depth discontinuity (an object's outline against what is behind it),
1. ``intensity_edge``: a change of reflectivity (lane paint on asphalt, kerb against road),
2. ``intensity``: the return's intensity,

(:func:`point_appearance` computes the same three per LiDAR point, from the sweep alone), and :func:`align` moves
the extrinsic to maximise the normalised cross-correlation between the predicted maps, sampled at the points'
projections, and the points' own values: coarse to fine (the maps blurred by ``sigmas`` px), L-BFGS over a bounded
rotation and translation update (``max_deg``, ``max_m`` per axis). An update that does not raise the correlation
at the finest level is refused and the estimate kept (counted in :attr:`CalibAligned.refused`).

The objective is that of targetless edge alignment (Levinson & Thrun, "Automatic Online Calibration of Cameras
and Lasers", RSS 2013) and of reflectivity-appearance matching (Pandey et al., "Automatic Extrinsic Calibration of
Vision and Lidar by Maximizing Mutual Information", JFR 2015). What is learned here is the image side: on the
synthetic world the raw image gradients' objective peaks away from the truth (refined from the truth it walks 25 cm
off), the learned maps' peaks at it. :class:`CalibAligned` puts a trained, frozen CalibFormer (or cascade) in
front and trains only the maps, supervised by the true projections.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from scipy.spatial import cKDTree
from torch import nn

from perception.geometry.camera_base import CameraModel
from perception.models.calibformer.cascade import checkpoint_path
from perception.models.calibformer.data import CalibTarget
from perception.models.calibformer.geometry import depth_image
from perception.models.calibformer.model import CalibBatch, CalibFormer, CalibPrediction, CalibPreprocessor, _rotmat

CHANNELS = ("depth_edge", "intensity_edge", "intensity")


def point_appearance(points: np.ndarray, intensity: np.ndarray | None = None, k: int = 8) -> np.ndarray:
    """What the LiDAR sees at each of ``points [N, 3]`` (LiDAR frame; ``intensity [N]`` in [0, 1] or None) →
    ``[N, 3]`` float32 in [0, 1], the :data:`CHANNELS`. Neighbours are the ``k`` nearest in direction from the
    LiDAR (so this does not depend on any extrinsic): ``depth_edge`` is the largest range jump to a neighbour
    behind the point, relative to its range (0.3 r → 1); ``intensity_edge`` the largest intensity difference
    (0.3 → 1). Without intensities the two intensity channels are 0 (and :func:`align` leaves them out)."""
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
        raise ValueError(f"point_appearance: expected [N >= 2, 3] points, got {pts.shape}")
    r = np.linalg.norm(pts, axis=1).clip(1e-6)
    k = min(k, len(pts) - 1)
    _, nb = cKDTree(pts / r[:, None]).query(pts / r[:, None], k + 1)
    nb = nb[:, 1:]
    out = np.zeros((len(pts), 3), np.float32)
    out[:, 0] = np.clip((r[nb].max(1) - r) / (0.3 * r), 0, 1)
    if intensity is not None:
        i = np.asarray(intensity, np.float64)
        if i.shape != (len(pts),):
            raise ValueError(f"point_appearance: intensity must be [{len(pts)}], got {i.shape}")
        out[:, 1] = np.clip(np.abs(i[nb] - i[:, None]).max(1) / 0.3, 0, 1)
        out[:, 2] = np.clip(i, 0, 1)
    return out


def appearance_targets(points: torch.Tensor, appearance: torch.Tensor, camera: CameraModel,
                       cam_from_lidar: torch.Tensor) -> torch.Tensor:
    """The maps :class:`AppearanceNet` learns: ``points [N, 3]``' ``appearance [N, 3]`` at their pixels through the
    true ``cam_from_lidar [4, 4]`` → ``[4, H, W]``: a mask of the pixels with a point, then the three channels of
    the nearest point there (:func:`~.geometry.depth_image`'s splat)."""
    x = points.double() @ cam_from_lidar[:3, :3].T.double() + cam_from_lidar[:3, 3].double()
    return depth_image(x, camera, values=appearance.double())[1:].float()


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AppearanceNet(nn.Module):
    """A small U-Net: ``image [B, 3, H, W]`` (normalised) → logits ``[B, 3, H, W]`` of the :data:`CHANNELS`, at full
    resolution (encoder at 1, 1/2, 1/4, 1/8; decoder back up with skips)."""

    def __init__(self, widths: Sequence[int] = (24, 48, 64, 96)) -> None:
        super().__init__()
        c = list(widths)
        if len(c) != 4:
            raise ValueError(f"AppearanceNet: widths must have 4 entries, got {widths!r}")
        self.enc = nn.ModuleList([nn.Sequential(_block(3, c[0]), _block(c[0], c[0])),
                                  nn.Sequential(_block(c[0], c[1], 2), _block(c[1], c[1])),
                                  nn.Sequential(_block(c[1], c[2], 2), _block(c[2], c[2])),
                                  nn.Sequential(_block(c[2], c[3], 2), _block(c[3], c[3]), _block(c[3], c[3]))])
        self.dec = nn.ModuleList([_block(c[3] + c[2], c[2]), _block(c[2] + c[1], c[1]), _block(c[1] + c[0], c[0])])
        self.head = nn.Conv2d(c[0], len(CHANNELS), 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        x = image
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
        for dec, skip in zip(self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)


def appearance_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``logits [B, 3, H, W]`` against :func:`appearance_targets` ``[B, 4, H, W]``, at the pixels with a point:
    binary cross-entropy for the two edge channels, 3 x L1 for the intensity."""
    m = targets[:, 0]
    n = m.sum().clamp_min(1)
    edges = F.binary_cross_entropy_with_logits(logits[:, :2], targets[:, 1:3], reduction="none").sum(1)
    inten = (torch.sigmoid(logits[:, 2]) - targets[:, 3]).abs()
    return ((edges + 3 * inten) * m).sum() / n


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``maps [C, H, W]`` (edges replicated)."""
    if sigma <= 0:
        return maps
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).expand(maps.shape[0], 1, -1)
    x = F.conv2d(F.pad(maps[None], (r, r, 0, 0), mode="replicate"), k[:, :, None, :], groups=maps.shape[0])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k[:, :, :, None], groups=maps.shape[0])[0]


def correlation(maps: torch.Tensor, points: torch.Tensor, appearance: torch.Tensor, camera: CameraModel,
                rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Sum over channels of the normalised cross-correlation between ``maps [C, H, W]`` (bilinearly sampled at the
    projections of ``points [N, 3]`` through ``[rotation | translation]``) and ``appearance [N, C]``, over the
    points in the image; a channel without variance contributes 0. Differentiable in the pose."""
    x = points @ rotation.T + translation
    uv, ok = camera.project(x)
    ok = ok & (x[:, 2] > 0.5) & camera.in_image(uv)
    if int(ok.sum()) < 3:
        return (x * 0).sum()  # (in the graph, so L-BFGS sees a zero gradient)
    grid = torch.stack([(uv[:, 0] + 0.5) / camera.width, (uv[:, 1] + 0.5) / camera.height], -1) * 2 - 1
    val = F.grid_sample(maps[None].to(x.dtype), grid[None, None], align_corners=False)[0, :, 0].T  # [N, C]
    w = ok.to(x.dtype)[:, None]
    n = w.sum()
    a = appearance.to(x.dtype)
    a = a - (a * w).sum(0) / n
    b = val - (val * w).sum(0) / n
    den = ((w * a * a).sum(0) * (w * b * b).sum(0)).sqrt()
    return torch.where(den > 1e-9, (w * a * b).sum(0) / den.clamp_min(1e-9), 0 * den).sum()


def align(maps: torch.Tensor, points: torch.Tensor, appearance: torch.Tensor, camera: CameraModel,
          start: torch.Tensor, sigmas: Sequence[float] = (3.0, 1.5, 0.75), iters: int = 30,
          max_deg: float = 3.0, max_m: float = 0.15) -> tuple[torch.Tensor, bool]:
    """``start [4, 4]`` moved to maximise :func:`correlation` of ``maps [C, H, W]`` (probabilities) with the
    points' ``appearance [N, C]``: :func:`align_frames` with one frame."""
    return align_frames([(maps, points, appearance, camera)], start, sigmas, iters, max_deg, max_m)


def align_frames(frames: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, CameraModel]], start: torch.Tensor,
                 sigmas: Sequence[float] = (3.0, 1.5, 0.75), iters: int = 30, max_deg: float = 3.0,
                 max_m: float = 0.15) -> tuple[torch.Tensor, bool]:
    """One extrinsic for several frames of the same (camera, LiDAR) pair: ``start [4, 4]`` moved to maximise the
    mean over ``frames`` (each ``(maps [C, H, W]`` probabilities, ``points [N, 3]``, their ``appearance [N, C]``,
    ``camera)``) of :func:`correlation`. The update is a correction ``[R_d R | t + t_d]`` (geometry.py's
    convention) with each rotation-vector component within ``max_deg`` and each translation within ``max_m``
    (tanh-bounded), by L-BFGS at each blur ``sigmas`` in turn. Returns the estimate and whether it was taken
    (False: the mean correlation at the finest blur did not rise, or became non-finite, and ``start`` is
    returned)."""
    if not sigmas:
        raise ValueError("align: needs at least one blur level in sigmas")
    if not frames:
        raise ValueError("align_frames: no frames")
    if tuple(start.shape) != (4, 4):
        raise ValueError(f"align: start must be [4, 4], got {tuple(start.shape)}")
    for maps, points, appearance, _ in frames:
        if maps.ndim != 3 or appearance.shape != (len(points), maps.shape[0]):
            raise ValueError(f"align: maps [C, H, W] and appearance [N, C] for points [N, 3] expected, got "
                             f"{tuple(maps.shape)}, {tuple(appearance.shape)}, {tuple(points.shape)}")
    start = start.double()
    data = [(p.double(), a.double(), cam) for _, p, a, cam in frames]
    lim = torch.tensor([np.radians(max_deg)] * 3 + [max_m] * 3, dtype=torch.float64, device=start.device)
    xi = torch.zeros(6, dtype=torch.float64, device=start.device, requires_grad=True)

    def pose() -> tuple[torch.Tensor, torch.Tensor]:
        d = lim * torch.tanh(xi)
        return _rotmat(d[:3]) @ start[:3, :3], start[:3, 3] + d[3:]

    def score(blurred: list[torch.Tensor], r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sum(correlation(b, p, a, cam, r, t) for b, (p, a, cam) in zip(blurred, data)) / len(data)

    with torch.enable_grad():
        for sigma in sigmas:
            blurred = [_blur(m.double(), sigma) for m, *_ in frames]
            opt = torch.optim.LBFGS([xi], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = -score(blurred, *pose())
                loss.backward()
                return loss

            opt.step(closure)
    with torch.no_grad():
        r, t = pose()
        before = score(blurred, start[:3, :3], start[:3, 3])
        after = score(blurred, r, t)
    if not (torch.isfinite(after) and after > before and torch.isfinite(r).all() and torch.isfinite(t).all()):
        return start, False
    out = start.clone()
    out[:3, :3], out[:3, 3] = r, t
    return out, True


def alignment_spread(frames: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, CameraModel]],
                     estimate: torch.Tensor, sigma: float = 0.75, step_deg: float = 0.05,
                     step_m: float = 0.01) -> np.ndarray:
    """How well ``frames`` (as :func:`align_frames` takes them, at least 2) pin down each axis of ``estimate
    [4, 4]``: the sandwich standard deviation of the maximiser of their mean :func:`correlation` (maps blurred by
    ``sigma`` px), ``H⁻¹ S H⁻¹ / n`` with ``H`` the mean correlation's Hessian (central differences of its
    gradient, steps ``step_deg`` / ``step_m``) and ``S`` the covariance of the frames' own gradients. Returns ``[6]``:
    rotation about the camera's x, y, z (deg, the correction's rotation vector) and translation along them (cm).

    It measures how much the frames disagree, scaled by how sharply the correlation peaks; a bias all the frames
    share (the appearance maps' peak off the truth) is not in it, so it is a lower bound on the error: on the
    synthetic jittered rigs the median error is 2 to 3 times it per axis (README, "How sure the estimate is").
    A direction in which the correlation is not at a maximum counts by its curvature's magnitude; the axes of a
    direction in which it does not change at all (a flat curvature) get ``inf``."""
    if len(frames) < 2:
        raise ValueError(f"alignment_spread: needs at least 2 frames for their spread, got {len(frames)}")
    if tuple(estimate.shape) != (4, 4):
        raise ValueError(f"alignment_spread: estimate must be [4, 4], got {tuple(estimate.shape)}")
    est = estimate.double()
    data = [(_blur(m.double(), sigma), p.double(), a.double(), cam) for m, p, a, cam in frames]

    def grads(d: torch.Tensor) -> torch.Tensor:  # [n, 6]: each frame's gradient at the correction d
        out = []
        with torch.enable_grad():
            for m, p, a, cam in data:
                x = d.clone().requires_grad_(True)
                c = correlation(m, p, a, cam, _rotmat(x[:3]) @ est[:3, :3], est[:3, 3] + x[3:])
                out.append(torch.autograd.grad(c, x)[0])
        return torch.stack(out)

    zero = torch.zeros(6, dtype=torch.float64)
    steps = torch.tensor([np.radians(step_deg)] * 3 + [step_m] * 3, dtype=torch.float64)
    hess = torch.stack([(grads(zero + e).mean(0) - grads(zero - e).mean(0)) / (2 * h)
                        for e, h in zip(torch.diag(steps), steps)])
    lam, vec = torch.linalg.eigh(-(hess + hess.T) / 2)
    lam = lam.abs()
    # the correlation does not change that way at all (not merely slowly: rad² and m² curvatures differ by the
    # scene's depth squared, so a shallow offset can be 1e-6 of the stiffest rotation): nothing pins it
    flat = lam <= 1e-9 * float(lam.max())
    inv = vec @ torch.diag(1 / torch.where(flat, torch.ones_like(lam), lam)) @ vec.T
    cov = inv @ torch.cov(grads(zero).T) @ inv / len(data)
    sd = cov.diagonal().clamp_min(0).sqrt()
    sd[(vec[:, flat].abs() > 0.1).any(1)] = float("inf")  # the axes that make up 1 % of such a direction
    return np.concatenate([np.degrees(sd[:3].numpy()), sd[3:].numpy() * 100])


class CalibAligned(BaseModel):
    """A trained, frozen calibration ``network`` (the keyword arguments of a :class:`CalibFormer`, or of another
    class named by ``type``, e.g. :class:`~.cascade.CalibCascade`; its weights from ``init_from``, a path taken
    from the repository root when not found from the working directory) followed by :func:`align` with an
    :class:`AppearanceNet` (``widths``), the only part trained. ``forward`` as :class:`CalibFormer`'s; ``predict``'s
    steps are the network's then the aligned estimate."""

    def __init__(self, network: Mapping, init_from: str | None = None, widths: Sequence[int] = (24, 48, 64, 96),
                 sigmas: Sequence[float] = (3.0, 1.5, 0.75), iters: int = 30, max_deg: float = 3.0,
                 max_m: float = 0.15, neighbours: int = 8) -> None:
        super().__init__(data_preprocessor=CalibPreprocessor())
        kw = dict(network)
        self.network = kw.pop("type", CalibFormer)(**kw)
        if init_from:
            from perception.engine.checkpoint import load_checkpoint

            self.network.load_state_dict(load_checkpoint(checkpoint_path(init_from))["state_dict"])
        self.network.requires_grad_(False)
        self.appearance = AppearanceNet(widths)
        self.sigmas, self.iters = tuple(float(s) for s in sigmas), int(iters)
        self.max_deg, self.max_m, self.neighbours = float(max_deg), float(max_m), int(neighbours)
        self.refused = 0  # alignments refused (estimate kept) since construction
        self._memo: dict[str, np.ndarray] = {}  # training pairs' point_appearance by token, as uint8 (it never changes)

    def train(self, mode: bool = True) -> "CalibAligned":
        super().train(mode)
        self.network.eval()  # frozen, batch-norm statistics included
        return self

    @property
    def iterations(self) -> int:
        return self.network.iterations + 1

    @property
    def reads_intensity(self) -> bool:
        """The alignment uses intensities when the inputs carry them; the network may require them."""
        return self.network.reads_intensity

    def _appearance(self, batch: CalibBatch, memo: bool = False) -> list[torch.Tensor]:
        """Each sample's ``point_appearance`` ``[N_b, 3]``; ``memo``: kept by token (training revisits its pairs),
        to 1/255."""
        inten = batch.intensity or [None] * len(batch.points)
        out = []
        for tok, p, i in zip(batch.tokens, batch.points, inten):
            a = self._memo.get(tok) if memo else None
            if a is None or len(a) != len(p):
                a = point_appearance(p.cpu().numpy(), None if i is None else i.cpu().numpy(), self.neighbours)
                if memo:
                    self._memo[tok] = a = np.round(a * 255).astype(np.uint8)
            out.append(torch.from_numpy(a.astype(np.float32) / 255 if a.dtype == np.uint8 else a).to(p.device))
        return out

    def forward(self, inputs: CalibBatch, data_samples: list[CalibTarget | None] | None = None, mode: str = "tensor"):
        if mode == "loss":
            if not data_samples or any(s is None for s in data_samples):
                raise ValueError("CalibAligned: training needs the true extrinsic of every sample")
            apps = self._appearance(inputs, memo=True)
            targets = torch.stack([appearance_targets(p, a, cam, torch.tensor(s.cam_from_lidar, device=p.device))
                                   for p, a, cam, s in zip(inputs.points, apps, inputs.cameras, data_samples)])
            return {"loss_appearance": appearance_loss(self.appearance(inputs.image), targets)}
        if mode == "predict":
            return self.predict(inputs)
        if mode == "tensor":
            return self.appearance(inputs.image)
        raise ValueError(f"CalibAligned: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    @torch.no_grad()
    def maps(self, image: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """:class:`AppearanceNet`'s probabilities ``[B, 3, H, W]`` for ``image [B, 3, H, W]``, ``chunk`` images at a time."""
        return torch.cat([torch.sigmoid(self.appearance(image[i:i + chunk])) for i in range(0, len(image), chunk)])

    @torch.no_grad()
    def align_sequence(self, batch: CalibBatch, start: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """One extrinsic for all of ``batch``'s pairs (frames of one camera and LiDAR): :func:`align_frames` from
        ``start [4, 4]`` (the pairs' own ``init`` is not used). Returns the estimate and whether it was taken (a
        refusal is counted in :attr:`refused`)."""
        frames = self._frames(batch)
        est, taken = align_frames(frames, start.to(frames[0][0].device), self.sigmas, self.iters, self.max_deg,
                                  self.max_m)
        self.refused += not taken
        return est, taken

    @torch.no_grad()
    def spread(self, batch: CalibBatch, estimate: torch.Tensor) -> np.ndarray:
        """:func:`alignment_spread` of ``estimate [4, 4]`` over ``batch``'s pairs (frames of one camera and LiDAR, at
        least 2), with the maps and channels :meth:`align_sequence` uses, at its finest blur → ``[6]`` (deg, cm)."""
        frames = self._frames(batch)
        return alignment_spread(frames, estimate.to(frames[0][0].device), self.sigmas[-1])

    def _frames(self, batch: CalibBatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, CameraModel]]:
        """``batch``'s pairs as :func:`align_frames` takes them: maps, points, appearance (the depth edges alone
        without intensities), camera."""
        maps = self.maps(batch.image)
        keep = slice(None) if batch.intensity is not None else slice(0, 1)
        return [(m[keep], p, a[:, keep], cam)
                for m, p, a, cam in zip(maps, batch.points, self._appearance(batch), batch.cameras)]

    @torch.no_grad()
    def predict(self, batch: CalibBatch, iterations: int | None = None) -> list[CalibPrediction]:
        """The network's estimate (over ``iterations``, default its own), then aligned."""
        steps = self.network.refine(batch, iterations)  # [K+1, B, 4, 4]
        maps = self.maps(batch.image)
        has_intensity = batch.intensity is not None
        out = []
        for b, (pts, app, cam) in enumerate(zip(batch.points, self._appearance(batch), batch.cameras)):
            keep = slice(None) if has_intensity else slice(0, 1)  # no intensities: the depth edges alone
            est, taken = align(maps[b, keep], pts, app[:, keep], cam, steps[-1, b], self.sigmas, self.iters,
                               self.max_deg, self.max_m)
            self.refused += not taken
            s = torch.cat([steps[:, b], est[None].to(steps.dtype)]).cpu().numpy()
            out.append(CalibPrediction(batch.tokens[b], s[-1], s[0], s, taken))
        return out
