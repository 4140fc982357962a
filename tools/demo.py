#!/usr/bin/env python
"""The demo: the embedded synthetic world, and every reader on the real samples when present.

Until the streaming pipeline lands, the most complete end-to-end path is: generate a few seconds
of driving in the synthetic world (LiDAR, 3 pinhole + 4 fisheye cameras, full ground truth), read
each real dataset sample in ``--data`` into the same typed ``Frame``s, and render BEV and camera
PNGs with the boxes projected through each frame's calibration. Writes ``OUT/<source>/*.png`` and
``OUT/summary.json`` (frames, points, boxes, cameras, missing sensors and seconds per source).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from perception.data import open_reader  # noqa: E402
from perception.sim.scene import SimConfig, SimSequence  # noqa: E402
from tools.browse_dataset import render_sample  # noqa: E402

# source → its sample folder under ../shared/data
SAMPLES = {
    "kitti": "kitti",
    "kitti360": "kitti360",
    "nuscenes": "nuscenes",
    "waymo": "mmdet3d_infos/waymo_kitti_format",
    "kitti-info": "mmdet3d_infos/kitti_demo",
}


def run_source(source: str, reader, out: Path, max_frames: int, every: int = 1) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    n = min(len(reader), max_frames)
    stats = {"frames": n, "points": 0, "boxes": 0, "cameras": 0, "missing_sensors": {}, "pngs": 0}
    for i in tqdm(range(n), desc=f"demo {source}", unit="frame"):
        s = reader[i]
        stats["points"] += sum(len(pc) for pc in s.frame.lidar.values())
        stats["boxes"] += len(s.targets.boxes) if s.targets is not None else 0
        stats["cameras"] += len(s.frame.cameras)
        for m in s.frame.missing:
            stats["missing_sensors"][m] = stats["missing_sensors"].get(m, 0) + 1
        if i % every == 0:
            stats["pngs"] += len(render_sample(s, out))
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of real samples")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--frames", type=int, default=3, help="frames per source")
    ap.add_argument("--sources", nargs="*", default=["sim", *SAMPLES], choices=["sim", *SAMPLES])
    ap.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    ap.add_argument("--sim-frames", type=int, default=20, help="synthetic frames (10 Hz)")
    args = ap.parse_args(argv)

    summary, failed = {"data": str(args.data), "sources": {}}, []
    for source in args.sources:
        try:
            if source == "sim":
                seq = SimSequence(args.seed, SimConfig(frames=args.sim_frames))
                stats = run_source("sim", seq, args.out / "sim", args.sim_frames, every=5)
                summary["sources"]["sim"] = {"seed": args.seed, "layout": seq.world.layout, **stats}
                continue
            root = args.data / SAMPLES[source]
            if not root.exists():
                summary["sources"][source] = {"skipped": f"{root} not present"}
                continue
            summary["sources"][source] = {"root": str(root), **run_source(source, open_reader(source, root), args.out / source, args.frames)}
        except Exception as e:  # noqa: BLE001 - report every source, then fail
            summary["sources"][source] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(source)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for source, s in summary["sources"].items():
        print(f"{source:>10}: " + ", ".join(f"{k}={v}" for k, v in s.items() if k != "root"))
    print(f"summary: {args.out / 'summary.json'}")
    if failed:
        print(f"demo: failed sources: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
