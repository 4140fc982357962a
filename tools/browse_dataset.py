#!/usr/bin/env python
"""Look at a dataset through our readers and calibration.

Writes, per frame, ``<token>_bev.png`` (LiDAR points coloured by height, 3D boxes from above)
and ``<token>_<camera>.png`` (LiDAR points coloured by depth and the 3D boxes projected through
the frame's calibration), like mmdet3d's ``tools/misc/browse_dataset.py``.

    python tools/browse_dataset.py --source kitti --root ../shared/data/kitti --out out/browse
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from perception.data import SOURCES, open_reader  # noqa: E402
from perception.structures import Sample  # noqa: E402
from perception.viz.bev import render_bev  # noqa: E402
from perception.viz.camera import render_camera  # noqa: E402


def render_sample(sample: Sample, out: Path, cameras: list[str] | None = None) -> list[Path]:
    """Write the BEV and camera PNGs of one sample into ``out``; returns the paths written."""
    f, t = sample.frame, sample.targets
    boxes = t.boxes if t is not None else None
    names = [str(n) for n in t.attributes["name"]] if t is not None and "name" in t.attributes else None
    written = []
    # BEV in the ego frame: every LiDAR moved into ego
    lidar_name, cloud = next(iter(f.lidar.items()))
    ego_pts = f.calib.transform("ego", lidar_name).apply(cloud.xyz.astype("float64"))
    path = out / f"{f.token}_bev.png"
    Image.fromarray(render_bev(ego_pts, boxes, names=names)).save(path)
    written.append(path)
    for cam, img in f.cameras.items():
        if cameras and cam not in cameras:
            continue
        pic = render_camera(img.image, f.calib, cam, ego_pts, "ego", boxes, names=names)
        path = out / f"{f.token}_{cam}.png"
        Image.fromarray(pic).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=SOURCES)
    ap.add_argument("--root", required=True, type=Path, help="dataset root (see README, 'Data sources')")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--frames", type=int, default=None, help="only the first N frames")
    ap.add_argument("--cameras", nargs="*", default=None, help="only these cameras")
    args = ap.parse_args(argv)

    reader = open_reader(args.source, args.root)
    args.out.mkdir(parents=True, exist_ok=True)
    n = len(reader) if args.frames is None else min(args.frames, len(reader))
    count = 0
    for i in tqdm(range(n), desc=f"browse {args.source}", unit="frame"):
        count += len(render_sample(reader[i], args.out, args.cameras))
    print(f"wrote {count} PNGs for {n} frames to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
