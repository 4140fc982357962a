#!/usr/bin/env python
"""PFDepth on real calibrations: KITTI-360 (perspective image_00 + MEI fisheyes 02/03) and WoodScape's front fisheye.

KITTI-360 (``--data/kitti360``): every frame's rectified perspective image goes in; the two side
fisheyes are in the calibration (MEI intrinsics, extrinsics) but the sample has no fisheye images,
so their depth is *rendered* from the volume the perspective view built (``rendered_only``). Depth
is scored against the frame's LiDAR sweep projected into each view through its own camera model
(z for the pinhole, range for the fisheyes; the nearest return per pixel), capped at 80 m, for
PFDepth and the monocular baseline released with it. The sample's ego frame (KITTI-360's GPS/IMU
"pose" frame) is moved down to the ground the way the synthetic world's is (ego origin on the
ground): the ground height is the 10th percentile of LiDAR z within 5-25 m ahead and ±4 m aside.

WoodScape (``--data/woodscape``): the front image with its radial-polynomial model and extrinsic
(vehicle frame on the ground below the rear axle, as in the synthetic world). No ground truth.

Writes ``OUT/<source>_<frame>_<camera>.png`` (colourised inverse depth; black: no depth) and
``OUT/metrics.json``. Images of the datasets stay in ``--out`` (not in the repository: their licences).

    python tools/pfdepth_real.py --out out/pfdepth_real
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perception.eval.depth import DepthAccumulator, DepthCaps  # noqa: E402
from perception.models.pfdepth.views import view_type  # noqa: E402
from perception.pipeline.camera import scale_camera  # noqa: E402
from perception.structures import SE3, Calibration, CameraImage, Frame  # noqa: E402
from perception.viz.depth import save_depth_png  # noqa: E402

CONFIG = ROOT / "configs/pfdepth/pfdepth_sim_cpu.py"
CHECKPOINT = ROOT / "checkpoints/pfdepth_sim_cpu.safetensors"


def lidar_depth(points_ego: np.ndarray, model, ego_from_cam: np.ndarray) -> np.ndarray:
    """LiDAR points ``[N, 3]`` (ego) → sparse depth ``[H, W]`` of ``model`` (z for pinholes, range otherwise; 0: none)."""
    cam_from_ego = np.linalg.inv(ego_from_cam)
    pc = points_ego @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]
    uv, ok = model.project(pc)
    d = pc[:, 2] if view_type(model) == "pinhole" else np.linalg.norm(pc, axis=1)
    ok &= d > 0.1
    u, v = np.round(uv[ok]).astype(int).T
    u, v = np.clip(u, 0, model.width - 1), np.clip(v, 0, model.height - 1)
    out = np.full((model.height, model.width), np.inf)
    np.minimum.at(out, (v, u), d[ok])
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)


def ground_height(points_ego: np.ndarray) -> float:
    p = points_ego
    sel = (p[:, 0] > 5) & (p[:, 0] < 25) & (np.abs(p[:, 1]) < 4)
    if sel.sum() < 100:
        raise SystemExit("pfdepth_real.py: too few LiDAR points ahead to find the ground")
    return float(np.percentile(p[sel, 2], 10))


def lift_ego(calib: Calibration, dz: float) -> Calibration:
    """The same rig with the ego origin moved ``dz`` metres up (sensors' ego z lowered by ``dz``)."""
    shift = np.eye(4)
    shift[2, 3] = -dz
    return replace(calib, ego_from_sensor={k: SE3(shift @ v.matrix) for k, v in calib.ego_from_sensor.items()})


def run_kitti360(model, root: Path, out: Path, frames: int) -> dict:
    from perception.data.kitti360 import Kitti360Reader

    reader = Kitti360Reader(root)
    pre = model.data_preprocessor
    cams = ("image_00", "image_02", "image_03")
    acc = {"pfdepth": DepthAccumulator(DepthCaps(max_depth=80.0)), "baseline": DepthAccumulator(DepthCaps(max_depth=80.0))}
    heights = []
    for i in range(min(frames, len(reader))):
        frame = reader[i].frame
        pts = frame.points_in_ego()[:, :3]
        h = ground_height(pts)
        heights.append(h)
        frame = replace(frame, calib=lift_ego(frame.calib, h))
        pts = pts - [0.0, 0.0, h]
        o = model.predict_depth([frame], cameras=cams)[0]
        for name, dm in o.maps.items():
            save_depth_png(out / f"kitti360_{frame.token}_{name}.png", dm)
            kind = view_type(frame.calib.cameras[name])
            W, H = pre.sizes[kind]
            cam = scale_camera(frame.calib.cameras[name], W, H)
            gt = lidar_depth(pts, cam, frame.calib.ego_from_sensor[name].matrix)
            tag = kind + ("_rendered" if name in o.rendered_only else "")
            acc["pfdepth"].add(tag, dm.depth, gt)
            if o.baseline is not None and name not in o.rendered_only:  # the baseline needs the view's image
                acc["baseline"].add(tag, o.baseline[name].depth, gt)
        if i == 0:
            save_depth_png(out / f"kitti360_{frame.token}_image_00_lidar.png", lidar_depth(
                pts, scale_camera(frame.calib.cameras["image_00"], *pre.sizes["pinhole"]),
                frame.calib.ego_from_sensor["image_00"].matrix))
    return {"frames": min(frames, len(reader)), "ground_height_m": float(np.mean(heights)),
            "pfdepth": acc["pfdepth"].results(), "baseline": acc["baseline"].results()}


def run_woodscape(model, root: Path, out: Path) -> dict:
    from PIL import Image

    from perception.geometry.cameras import RadialPolyFisheye, woodscape_extrinsic

    cam = RadialPolyFisheye.from_woodscape_json(root / "front.json")
    image = np.asarray(Image.open(root / "front.jpg").convert("RGB"))
    calib = Calibration({"FV": SE3(woodscape_extrinsic(root / "front.json"))}, {"FV": cam})
    frame = Frame("woodscape_front", 0.0, calib, cameras={"FV": CameraImage(image, cam, 0.0, "FV")}, source="woodscape")
    o = model.predict_depth([frame], cameras=("FV",))[0]
    save_depth_png(out / "woodscape_front_FV.png", o.maps["FV"])
    if o.baseline is not None:
        save_depth_png(out / "woodscape_front_FV_baseline.png", o.baseline["FV"])
    d = o.maps["FV"].depth
    return {"view_type": o.view_types["FV"], "valid_pixels": int((d > 0).sum()),
            "median_range_m": float(np.median(d[d > 0])) if (d > 0).any() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "pfdepth_real")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args(argv)
    from perception.pipeline.model_stage import ModelStage

    for p in (args.data / "kitti360", args.data / "woodscape", args.checkpoint):
        if not p.exists():
            print(f"pfdepth_real.py: error: {p} not found", file=sys.stderr)
            return 2
    model = ModelStage(args.config, args.checkpoint).model
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"kitti360": run_kitti360(model, args.data / "kitti360", args.out, args.frames),
           "woodscape": run_woodscape(model, args.data / "woodscape", args.out)}
    (args.out / "metrics.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
