#!/usr/bin/env python
"""Replay a ROS recording through the pipeline and write what it made to an MCAP file for Foxglove.

    python tools/replay.py BAG --config CONFIG [--rate 1.0|max] [--out OUT.mcap] [--workers 0]

``BAG``: a ROS1 ``.bag``, a ROS2 ``.db3`` / ``.mcap`` (or its rosbag2 folder), or an MCAP with ROS1
encoding. ``CONFIG`` (``configs/replay/*.py``): ``rosbag`` (topic → sensor mapping, ego frame, reorder
window: :class:`perception.data.rosbag.RosbagConfig`; ``topics={}`` auto-detects), ``models``
(``(config, checkpoint)`` pairs, repository-relative), ``num_sweeps``, ``sync_tolerance``.

Messages go in stamp order into the streaming pipeline (synchronizer → preprocessing → models), at the
recorded speed × ``--rate`` or as fast as possible (``--rate max``). ``OUT.mcap`` (chunked, zstd, CRCs):
``/lidar`` point clouds, cameras, ``/detections`` (``foxglove.SceneUpdate``), ``/plan`` (the planner's
path), ``/gaussians``, ``/depth/<camera>`` (a model's depth, and depth images from the recording),
``/tf``. Beside it: ``OUT.parquet`` (one row per box) and ``OUT.summary.json`` (stage latencies, sync
counts, the reader's counts: unknown types, malformed messages, NaN points, reordered and late messages).

A damaged recording is replayed up to its last complete message; the run then ends with exit code 2 and
the error naming the file and byte offset.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def parse_rate(text: str) -> float | None:
    """``"max"`` → None (as fast as possible), else a positive float."""
    if text == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate: a positive number or 'max', got {text!r}") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"--rate: must be > 0, got {text!r}")
    return rate


def paced(messages, rate: float | None):
    """Yield ``messages`` no earlier than their recorded offset from the first one, divided by ``rate``."""
    t0 = wall0 = None
    for m in messages:
        if rate is not None:
            if t0 is None:
                t0, wall0 = m.timestamp, time.perf_counter()
            delay = (m.timestamp - t0) / rate - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
        yield m


def load_replay_config(path: Path) -> dict:
    from mmengine.config import Config

    if not path.is_file():
        raise SystemExit(f"replay.py: error: config {path} not found")
    cfg = Config.fromfile(str(path))
    unknown = set(cfg.keys()) - {"rosbag", "models", "num_sweeps", "sync_tolerance"}
    if unknown:
        raise SystemExit(f"replay.py: error: {path}: unknown keys {sorted(unknown)}")
    return cfg.to_dict()


def replay(bag: Path, config: dict, out: Path, rate: float | None = None, workers: int = 0,
           progress: bool = True) -> dict:
    """Replay ``bag`` with ``config`` (see the module docstring) into ``out`` (.mcap); returns the summary.

    Raises :class:`perception.data.rosbag.RecordingError` after writing everything salvaged from a damaged file.
    """
    from perception.data.rosbag import RecordingError, RosbagReader
    from perception.pipeline.app import PipelineConfig, run_frames
    from perception.pipeline.sinks import McapSink, MultiSink, PredictionTable
    from perception.pipeline.sync import Synchronizer
    from perception.structures import DepthMap
    from perception.viz.depth import depth_to_rgb
    from perception.viz.mcap_writer import compressed_image_message, to_ns

    reader = RosbagReader(bag, config.get("rosbag") or {})
    models = tuple((ROOT / c, ROOT / k) for c, k in config.get("models", ()))
    cfg = PipelineConfig(models=models, num_sweeps=config.get("num_sweeps", 3),
                         sync_tolerance=config.get("sync_tolerance", 0.05))
    mcap = McapSink(out)
    sinks = MultiSink(mcap, PredictionTable(out.with_suffix(".parquet")))
    depth_written = 0

    def side(topic: str, obj) -> None:  # depth images of the recording go straight to the MCAP
        nonlocal depth_written
        if isinstance(obj, DepthMap):
            ns = to_ns(obj.timestamp)
            mcap.writer.write(f"/depth/{obj.camera}", "foxglove.CompressedImage", ns,
                              compressed_image_message(ns, depth_to_rgb(obj), obj.camera))
            depth_written += 1

    sync = Synchronizer(reader.calib, reader.reference, cfg.sync_tolerance, reader.config.reorder_window,
                        source="rosbag")
    failure: list[RecordingError] = []

    def messages():
        try:
            yield from paced(reader.messages(side), rate)
        except RecordingError as e:  # salvaged up to here: finish the run, then report
            failure.append(e)

    total = len(reader)
    result = run_frames(sync.frames(messages()), sync, reader.calib, sinks, cfg, workers, total,
                        with_cameras=bool(reader.calib.cameras))
    result.update(recording=str(bag), reference_lidar=reader.reference, ego_frame=reader.ego_frame,
                  sensors={t: vars(s) for t, s in reader.sensors.items()}, reader=reader.stats.as_dict(),
                  depth_images_from_recording=depth_written, rate="max" if rate is None else rate)
    out.with_suffix(".summary.json").write_text(json.dumps(result, indent=2, default=str))
    if failure:
        raise failure[0]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", type=Path, help="ROS1 .bag, ROS2 .db3/.mcap or rosbag2 folder, MCAP (ROS1 or CDR)")
    ap.add_argument("--config", type=Path, required=True, help="replay config (configs/replay/*.py)")
    ap.add_argument("--rate", type=parse_rate, default=1.0, help="playback speed (1.0 = recorded) or 'max'")
    ap.add_argument("--out", type=Path, default=Path("out/replay/replay.mcap"))
    ap.add_argument("--workers", type=int, default=0, help="0: in process; >= 1: one Ray actor per stage")
    args = ap.parse_args(argv)
    if not args.bag.exists():
        ap.error(f"recording {args.bag} not found")
    if args.out.suffix != ".mcap":
        ap.error(f"--out must end in .mcap, got {args.out}")
    from perception.data.common import DataError
    from perception.data.rosbag import RecordingError

    config = load_replay_config(args.config)
    try:
        r = replay(args.bag, config, args.out, args.rate, args.workers)
    except RecordingError as e:
        print(f"replay: {args.bag}: replayed the complete messages, then: {e}", file=sys.stderr)
        print(f"summary: {args.out.with_suffix('.summary.json')}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"replay.py: error: {e}", file=sys.stderr)
        return 1
    st = r["reader"]
    print(f"replay ({r['mode']}): {r['frames_out']}/{r['frames_in']} frames from {args.bag} → {args.out}")
    print(f"  reader: {sum(st['decoded'].values())} messages decoded; unknown types {st['unknown_types'] or 0}; "
          f"malformed {st['malformed'] or 0}; NaN points {sum(st['nan_points'].values())}; reordered "
          f"{st['reordered']}; late {st['late'] or 0}")
    print(f"  mcap: {r['sinks']['McapSink']['messages']}")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
