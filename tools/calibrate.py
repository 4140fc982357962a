#!/usr/bin/env python
"""Estimate a LiDAR→camera extrinsic over a sequence with a trained CalibFormer.

    python tools/calibrate.py --source kitti360 --root ../shared/data/kitti360 --perturb 10 0.25 --out out/calib_kitti360
    python tools/calibrate.py --source kitti --root ../shared/data/kitti --init my_extrinsic.txt --out out/calib_kitti

Starts from ``--init`` (a camera-from-LiDAR 4x4 or 3x4 matrix: 12 or 16 numbers in a text file, or a
``.npy``), or from the dataset's own calibration moved by a known random miscalibration
(``--perturb DEG M``: each angle uniform in +-DEG, each axis in +-M, ``--seed``), or from the dataset's
calibration itself. Every frame gives an estimate; the result is their robust aggregate (component-wise
median correction, :mod:`perception.models.calibformer.calibrate`); a model with a learned appearance alignment
(``--config configs/calibformer/calibformer_align_jitter_sim_cpu.py``) then aligns that median to all the frames
at once; ``--parallax`` then refines that by the car's motion between the frames
(:mod:`perception.models.calibformer.parallax`; it needs the car's pose at every frame, which KITTI's and
KITTI-360's readers here do not give). Writes into ``--out``:

- ``extrinsic.txt``: the estimated camera-from-LiDAR 4x4;
- ``report.json``: the start, the estimate, the dataset's calibration, and the errors of the start and of the
  estimate against the dataset's calibration (the reference: the truth for KITTI / KITTI-360), aggregated
  and per frame (``perception.eval.calibration``), and the ``spread``: per camera axis, how well the frames pin
  the estimate down (a lower bound on its error, :class:`perception.models.calibformer.calibrate.SequenceCalibration`);
- ``overlay_{before,after,reference}_<token>.png``: LiDAR points coloured by depth drawn through each extrinsic.

``--source bag`` reads a ROS1 ``.bag``, a ROS2 ``.db3`` / ``.mcap`` or an MCAP through
:class:`perception.data.rosbag.RosbagReader` (calibration from ``/tf_static`` and the CameraInfos).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from perception.data.common import DataError  # noqa: E402
from perception.engine.cli import clean_errors  # noqa: E402
from perception.geometry.se3 import SE3, check_rigid  # noqa: E402

SOURCES = ("kitti360", "kitti", "bag")


def read_extrinsic(path: Path) -> np.ndarray:
    """A ``[4, 4]`` rigid transform from a ``.npy`` or a text file of 12 or 16 numbers."""
    try:
        m = np.load(path) if path.suffix == ".npy" else np.array(path.read_text().replace(",", " ").split(), float)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read an extrinsic: {e}") from None
    m = np.asarray(m, np.float64)
    if m.size not in (12, 16):
        raise DataError(path, f"expected 12 or 16 numbers (a 3x4 or 4x4 matrix), found {m.size}")
    try:
        return check_rigid(m.reshape(-1, 4), str(path))
    except ValueError as e:
        raise DataError(path, str(e)) from None


def open_source(source: str, root: Path):
    if source == "bag":  # a ROS1 .bag, ROS2 .db3 / .mcap or rosbag2 folder (issue #11's reader; topics auto-detected)
        from perception.data.rosbag import RosbagReader

        return RosbagReader(root)
    from perception.data import open_reader

    return open_reader(source, root)


def overlay(frame, camera: str, lidar: str, cam_from_lidar: np.ndarray) -> np.ndarray:
    """The camera image with the sweep drawn through ``cam_from_lidar`` (points coloured by depth)."""
    from perception.structures import Calibration
    from perception.viz.camera import render_camera

    calib = Calibration({lidar: SE3.identity(), camera: SE3(cam_from_lidar).inverse()},
                        {camera: frame.calib.cameras[camera]})
    return render_camera(frame.cameras[camera].image, calib, camera, frame.lidar[lidar].points[:, :3], lidar)


def _axes(values: np.ndarray, digits: int) -> dict:
    """``values [3]`` by camera axis, rounded; a non-finite one (an axis nothing constrains) as None."""
    return {a: round(float(v), digits) if np.isfinite(v) else None for a, v in zip("xyz", values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=SOURCES)
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--init", type=Path, help="starting camera-from-LiDAR extrinsic (12 or 16 numbers, or .npy)")
    ap.add_argument("--perturb", nargs=2, type=float, metavar=("DEG", "M"),
                    help="start from the dataset's calibration with a random miscalibration of up to DEG / M per axis")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --perturb miscalibration")
    ap.add_argument("--camera", help="camera to calibrate (default: the first pinhole camera with images)")
    ap.add_argument("--frames", type=int, help="only the first N frames")
    ap.add_argument("--iterations", type=int, help="refinement iterations (default: the config's)")
    ap.add_argument("--overlays", type=int, default=1, help="frames to draw overlays for")
    ap.add_argument("--config", type=Path, help="model config (default: the released CalibFormer)")
    ap.add_argument("--checkpoint", type=Path, help="model weights (default: the released CalibFormer)")
    ap.add_argument("--parallax", action="store_true",
                    help="refine by motion parallax between the frames (needs the car's pose at every frame)")
    ap.add_argument("--out", type=Path, default=Path("out/calibrate"))
    args = ap.parse_args(argv)
    if args.init is not None and args.perturb is not None:
        ap.error("--init and --perturb exclude each other")

    with clean_errors("calibrate.py"):
        from PIL import Image
        from tqdm import tqdm

        from perception.eval.calibration import calibration_errors, summarize
        from perception.models.calibformer.calibrate import RELEASED, Calibrator
        from perception.models.calibformer.geometry import sample_miscalibration

        reader = open_source(args.source, args.root)
        n = len(reader) if args.frames is None else min(args.frames, len(reader))
        frames = [reader.load(i).frame for i in tqdm(range(n), desc="reading", unit="frame")]
        if not frames:
            raise DataError(args.root, "no frames")
        f0 = frames[0]
        if len(f0.lidar) != 1:
            raise DataError(args.root, f"expected one LiDAR, found {tuple(f0.lidar)}")
        lidar = next(iter(f0.lidar))
        camera = args.camera or next((c for c in f0.cameras if hasattr(f0.calib.cameras[c], "fx")), None)
        if camera is None or camera not in f0.calib.cameras:
            raise DataError(args.root, f"no pinhole camera {args.camera or ''} with images; cameras: {tuple(f0.cameras)}")
        reference = f0.calib.transform(camera, lidar).matrix
        posed = sum(f.ego_pose is not None for f in frames)
        if args.parallax and posed < len(frames):
            raise DataError(args.root, f"--parallax needs the car's pose at every frame; {posed} of {len(frames)} "
                                       f"frames from --source {args.source} have one")
        if args.parallax and len(frames) < 3:
            raise DataError(args.root, f"--parallax compares frames 2 to 4 apart: it needs at least 3 frames, got "
                                       f"{len(frames)}")
        if args.init is not None:
            init, start = read_extrinsic(args.init), f"--init {args.init}"
        elif args.perturb is not None:
            mis = sample_miscalibration(np.random.default_rng(args.seed), *args.perturb)
            init, start = mis.apply(reference), f"dataset calibration perturbed by up to {args.perturb[0]} deg / {args.perturb[1]} m (seed {args.seed})"
        else:
            init, start = reference, "dataset calibration"

        cal = Calibrator(args.config or RELEASED[0], args.checkpoint or RELEASED[1], iterations=args.iterations)
        result = cal.calibrate(frames, camera, init, lidar, progress=True, parallax=args.parallax)

        args.out.mkdir(parents=True, exist_ok=True)
        np.savetxt(args.out / "extrinsic.txt", result.estimate, fmt="%.9f", header=f"{camera}_from_{lidar} (4x4)")
        before = summarize(calibration_errors(init, reference))
        after = summarize(calibration_errors(result.estimate, reference))
        per = calibration_errors(result.per_frame, reference)
        keys = ("rot_geodesic_deg_mean", "rot_axis_mean_deg", "trans_norm_cm_mean", "trans_axis_mean_cm")
        report = {
            "source": args.source, "root": str(args.root), "camera": camera, "lidar": lidar, "start": start,
            "frames": list(result.tokens), "skipped": [list(s) for s in result.skipped],
            "init": init.tolist(), "estimate": result.estimate.tolist(), "reference": reference.tolist(),
            "before": {k.removesuffix("_mean"): before[k] for k in keys},
            "after": {k.removesuffix("_mean"): after[k] for k in keys},
            "per_frame": {tok: {"rot_geodesic_deg": float(per["rot_geodesic_deg"][i]),
                                "trans_norm_cm": float(per["trans_norm_cm"][i])} for i, tok in enumerate(result.tokens)},
            "per_frame_summary": summarize(per),
            "deskewed": f"{result.deskewed} of {len(result.tokens)} frames' sweeps moved to the camera's exposure by "
                        "odometry (the others have no per-point times or no odometry: as measured)",
            "joint_alignment": {None: "none (the model has none: the estimate is the frames' median)",
                                True: "taken", False: "refused (the frames' median kept)"}[result.aligned],
            "parallax": None if result.parallax is None else {
                "taken": result.parallax.taken, "start_score": round(result.parallax.start_score, 5),
                "score": round(result.parallax.score, 5), "evaluations": result.parallax.evaluations},
            "spread": None if result.spread is None else {
                "rot_deg": _axes(result.spread[:3], 4), "trans_cm": _axes(result.spread[3:], 3),
                "what": "how well the frames pin each camera axis down (x right, y down, z forward): "
                        + ("the joint alignment's sandwich standard deviation" if result.aligned else
                           "the standard error of the frames' median")
                        + (" (before the parallax step)" if result.parallax is not None else "")
                        + "; a lower bound on the error (a bias the frames share is not in it); null: the frames "
                          "do not constrain that axis at all"},
        }
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        by_token = {f.token: f for f in frames}
        for tok in result.tokens[: args.overlays]:
            for name, t in (("before", init), ("after", result.estimate), ("reference", reference)):
                Image.fromarray(overlay(by_token[tok], camera, lidar, t)).save(args.out / f"overlay_{name}_{tok}.png")
        print(f"{camera} <- {lidar}, {len(result.tokens)} frames ({len(result.skipped)} skipped), start: {start}, "
              f"joint alignment: {report['joint_alignment']}, deskewed: {result.deskewed} of {len(result.tokens)}")
        for label, s in (("before", report["before"]), ("after", report["after"])):
            print(f"  {label:6s}: rotation {s['rot_geodesic_deg']:.3f} deg (per-axis mean {s['rot_axis_mean_deg']:.3f}), "
                  f"translation {s['trans_norm_cm']:.2f} cm (per-axis mean {s['trans_axis_mean_cm']:.2f})")
        if result.spread is not None:
            r, t = result.spread[:3], result.spread[3:]
            print("  spread (lower bound; camera x, y, z): rotation " + " / ".join(f"{v:.3f}" for v in r)
                  + " deg, translation " + " / ".join(f"{v:.2f}" for v in t) + " cm")
        print(f"wrote {args.out}/extrinsic.txt, report.json and overlays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
