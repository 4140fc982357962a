#!/usr/bin/env python
"""Render the README's pictures of one synthetic frame (deterministic from the seed).

    python tools/sim_figures.py --out docs --seed 0 --frame 10

Writes ``sim_cameras.jpg`` (the 3 pinhole and 4 fisheye images as the car sees them),
``sim_depth.jpg`` (their depth maps), ``sim_bev.png`` (the LiDAR sweep with the labelled boxes)
and ``sim_bev_semantic.png`` (the BEV semantic ground truth).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from perception.sim import world as W  # noqa: E402
from perception.sim.scene import LIDAR, SimConfig, SimSequence  # noqa: E402
from perception.viz.bev import render_bev  # noqa: E402
from perception.viz.colors import colormap  # noqa: E402

SEMANTIC_COLORS = np.array([
    (70, 110, 50), (160, 160, 155), (60, 60, 66), (235, 235, 230), (225, 185, 30), (85, 85, 95),
    (255, 158, 0), (0, 200, 255), (220, 20, 220), (150, 120, 110), (120, 120, 130), (40, 140, 40), (135, 180, 235),
], np.uint8)


def mosaic(images: list[np.ndarray], height: int) -> np.ndarray:
    """Side by side, each scaled to ``height``."""
    tiles = [np.asarray(Image.fromarray(im).resize((round(im.shape[1] * height / im.shape[0]), height))) for im in images]
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frame", type=int, default=10)
    args = ap.parse_args(argv)
    seq = SimSequence(args.seed, SimConfig(frames=args.frame + 1))
    s = seq[args.frame]
    f, tg = s.frame, s.targets
    args.out.mkdir(parents=True, exist_ok=True)
    pin = [f.cameras[c].image for c in ("CAM_L0", "CAM_F0", "CAM_R0")]
    fish = [f.cameras[c].image for c in ("FISHEYE_LEFT", "FISHEYE_FRONT", "FISHEYE_RIGHT", "FISHEYE_REAR")]
    top, bottom = mosaic(pin, 240), mosaic(fish, 320)
    width = max(top.shape[1], bottom.shape[1])
    pad = lambda im: np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)))  # noqa: E731
    Image.fromarray(np.concatenate([pad(top), pad(bottom)])).save(args.out / "sim_cameras.jpg", quality=88)

    def depth_rgb(c):
        d = tg.depth[c].depth
        rgb = colormap(d.ravel(), 0.0, 60.0).reshape(d.shape + (3,))
        rgb[d == 0] = 0
        return rgb

    dtop = mosaic([depth_rgb(c) for c in ("CAM_L0", "CAM_F0", "CAM_R0")], 240)
    dbot = mosaic([depth_rgb(c) for c in ("FISHEYE_LEFT", "FISHEYE_FRONT", "FISHEYE_RIGHT", "FISHEYE_REAR")], 320)
    Image.fromarray(np.concatenate([pad(dtop), pad(dbot)])).save(args.out / "sim_depth.jpg", quality=88)

    pts = f.calib.transform("ego", LIDAR).apply(f.lidar[LIDAR].xyz.astype(np.float64))
    Image.fromarray(render_bev(pts, tg.boxes, xy_range=(-30, -30, 50, 30), resolution=0.1)).save(args.out / "sim_bev.png")
    sem = SEMANTIC_COLORS[tg.bev_semantic][::-1, ::-1]  # rows along +x → up, columns along +y → left
    Image.fromarray(sem).resize((400, 400), Image.NEAREST).save(args.out / "sim_bev_semantic.png")
    print(f"wrote {args.out}/sim_cameras.jpg, sim_depth.jpg, sim_bev.png, sim_bev_semantic.png "
          f"(seed {args.seed}, layout {seq.world.layout}, frame {args.frame}, {len(tg.boxes)} boxes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
