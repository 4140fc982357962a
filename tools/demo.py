#!/usr/bin/env python
"""The demo: the streaming pipeline on the embedded synthetic world (or real data), then every reader.

1. The pipeline (``perception.pipeline.app``): a few seconds of synthetic driving (LiDAR, 3 pinhole +
   4 fisheye cameras, full ground truth) → synchronizer → LiDAR preprocessing (motion compensation,
   multi-sweep, voxelization) and camera preprocessing → every trained model in ``checkpoints/``
   → sinks, on one Ray actor per stage (``--workers 0``: in process). Writes
   ``OUT/pipeline/{predictions.parquet, predictions_frames.parquet, demo.mcap, png/}``.
   ``--source kitti --root DIR`` (any ``open_reader`` source) streams real data instead.
2. Every reader on the real samples in ``--data`` (when present): BEV and camera PNGs with boxes.

``OUT/summary.json``: per-stage latency and throughput, errors with frame ids, sync counts, sink
outputs, and per-source reader stats.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from perception.data import SOURCES, open_reader  # noqa: E402
from perception.pipeline.app import run_pipeline  # noqa: E402
from perception.sim.scene import LIDAR, SimConfig, SimSequence  # noqa: E402
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


def pipeline_source(args) -> tuple:
    """``(samples, calib, reference LiDAR, frame count)`` for ``--source``."""
    if args.source == "sim" and args.root is None:
        seq = SimSequence(args.seed, SimConfig(frames=args.sim_frames))
        return seq, seq.calib, LIDAR, len(seq)
    if args.root is None:
        raise SystemExit(f"demo.py: error: --source {args.source} needs --root")
    reader = open_reader(args.source, args.root)
    first = reader[0]
    lidars = list(first.frame.lidar)
    if not lidars:
        raise SystemExit(f"demo.py: error: {args.source} frames carry no LiDAR; the pipeline is clocked by one")
    n = min(len(reader), args.frames_real)
    return itertools.chain([first], (reader[i] for i in range(1, n))), first.frame.calib, lidars[0], n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="sim", choices=SOURCES, help="what the pipeline streams (sim without --root: the world, rendered live)")
    ap.add_argument("--root", type=Path, help="dataset root for a real --source")
    ap.add_argument("--workers", type=int, default=1, help="0: in process; >= 1: one Ray actor per stage")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of real samples to browse")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--frames", type=int, default=3, help="frames per browsed sample source")
    ap.add_argument("--frames-real", type=int, default=50, help="frames the pipeline takes from a real --source")
    ap.add_argument("--browse", nargs="*", default=list(SAMPLES), choices=list(SAMPLES), help="sample sources to browse")
    ap.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    ap.add_argument("--sim-frames", type=int, default=40, help="synthetic frames (10 Hz)")
    args = ap.parse_args(argv)

    summary, failed = {"data": str(args.data), "pipeline": None, "sources": {}}, []
    samples, calib, reference, n = pipeline_source(args)
    summary["pipeline"] = {"source": args.source, "reference_lidar": reference,
                           **run_pipeline(samples, calib, reference, args.out / "pipeline", workers=args.workers, total=n)}
    if summary["pipeline"]["errors"]:
        failed.append("pipeline")
    for source in args.browse:
        root = args.data / SAMPLES[source]
        if not root.exists():
            summary["sources"][source] = {"skipped": f"{root} not present"}
            continue
        try:
            summary["sources"][source] = {"root": str(root), **run_source(source, open_reader(source, root),
                                                                          args.out / source, args.frames)}
        except Exception as e:  # noqa: BLE001 - report every source, then fail
            summary["sources"][source] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(source)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    p = summary["pipeline"]
    print(f"pipeline ({p['mode']}, {args.source}): {p['frames_out']}/{p['frames_in']} frames, {p['fps']:.2f} frames/s")
    for st in p["stages"]:
        print(f"  {st['name']:>22}: {st['calls']} calls, p50 {st['latency_ms_p50']:.1f} ms, "
              f"p95 {st['latency_ms_p95']:.1f} ms, {st['errors']} errors")
    for source, s in summary["sources"].items():
        print(f"{source:>10}: " + ", ".join(f"{k}={v}" for k, v in s.items() if k != "root"))
    print(f"summary: {args.out / 'summary.json'}")
    if failed:
        print(f"demo: failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
