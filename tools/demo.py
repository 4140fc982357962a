#!/usr/bin/env python
"""The demo: every reader on the real samples, rendered through our calibration.

Until the streaming pipeline and the synthetic world land, the most complete end-to-end path is:
read each dataset sample in ``--data`` into typed ``Frame``s, validate them, and render BEV and
camera PNGs with boxes projected through the calibration. Writes ``OUT/<source>/*.png`` and
``OUT/summary.json`` (frames, points, boxes, cameras, missing sensors and time per source).
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
from tools.browse_dataset import render_sample  # noqa: E402

# source → its sample folder under ../shared/data
SAMPLES = {
    "kitti": "kitti",
    "kitti360": "kitti360",
    "nuscenes": "nuscenes",
    "waymo": "mmdet3d_infos/waymo_kitti_format",
    "kitti-info": "mmdet3d_infos/kitti_demo",
}


def run_source(source: str, root: Path, out: Path, max_frames: int) -> dict:
    t0 = time.perf_counter()
    reader = open_reader(source, root)
    out.mkdir(parents=True, exist_ok=True)
    n = min(len(reader), max_frames)
    stats = {"root": str(root), "frames": n, "points": 0, "boxes": 0, "cameras": 0, "missing_sensors": {}, "pngs": 0}
    for i in tqdm(range(n), desc=f"demo {source}", unit="frame"):
        s = reader[i]
        stats["points"] += sum(len(pc) for pc in s.frame.lidar.values())
        stats["boxes"] += len(s.targets.boxes) if s.targets is not None else 0
        stats["cameras"] += len(s.frame.cameras)
        for m in s.frame.missing:
            stats["missing_sensors"][m] = stats["missing_sensors"].get(m, 0) + 1
        stats["pngs"] += len(render_sample(s, out))
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of real samples")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--frames", type=int, default=3, help="frames per source")
    ap.add_argument("--sources", nargs="*", default=list(SAMPLES), choices=list(SAMPLES))
    args = ap.parse_args(argv)

    if not args.data.exists():
        print(f"demo: no sample data at {args.data}. Point --data at a folder laid out like ../shared/data "
              "(see README, 'Data sources').", file=sys.stderr)
        return 2
    summary, failed = {"data": str(args.data), "sources": {}}, []
    for source in args.sources:
        root = args.data / SAMPLES[source]
        if not root.exists():
            summary["sources"][source] = {"skipped": f"{root} not present"}
            continue
        try:
            summary["sources"][source] = run_source(source, root, args.out / source, args.frames)
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
