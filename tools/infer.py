"""Batch inference over a whole dataset on Ray Data, in resumable shards (see perception/pipeline/batch.py).

    python tools/infer.py CONFIG CKPT --data sim:seeds=0,frames=200 --out preds/
    python tools/infer.py CONFIG CKPT --data kitti --root ../shared/data/kitti --out preds/ --actors 2
    python tools/infer.py CONFIG CKPT --data kitti --root ROOT --out preds/ --resume      # after a crash or ^C
    python tools/infer.py CONFIG CKPT --data nuscenes --root ROOT --out preds/ --address auto  # a running cluster

Output: OUT/shards/shard-XXXXX.parquet (one row per box), OUT/shards/shard-XXXXX.frames.parquet (one
row per frame, with its error if it failed) and OUT/manifest.json (finished shards, counts, errors).
--data: a source (kitti, kitti360, nuscenes, waymo, kitti-info, navsim, sim) with --root, or synthetic
frames rendered on the fly: sim or sim:seeds=0-3,frames=50,lidar=hdl64,cameras=0 (no --root).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.engine.cli import clean_errors  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="model config (configs/...)")
    ap.add_argument("checkpoint", help="weights (.pth or .safetensors)")
    ap.add_argument("--data", required=True, help="source, e.g. kitti (with --root) or sim:seeds=0-3,frames=50")
    ap.add_argument("--root", help="dataset folder for --data SOURCE")
    ap.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --resume)")
    ap.add_argument("--shard-size", type=int, default=50, help="frames per output shard (default 50)")
    ap.add_argument("--batch-size", type=int, default=4, help="frames per model call (default 4)")
    ap.add_argument("--actors", type=int, default=1, help="model actors (capped to the CPUs, one kept for loading)")
    ap.add_argument("--address", help="Ray cluster to join, e.g. auto (default: a local Ray on all CPUs)")
    ap.add_argument("--resume", action="store_true", help="continue OUT: skip shards already finished")
    ap.add_argument("--limit", type=int, help="only the first N frames")
    ap.add_argument("--max-shards", type=int, help="write at most K unfinished shards in this run")
    ap.add_argument("--device", default="cpu", help="torch device inside the model actors (default cpu)")
    ap.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with clean_errors("infer.py"):
        from perception.pipeline.batch import DataSpec, run_inference

        if args.root is not None and not Path(args.root).exists():
            from perception.data.common import DataError

            raise DataError(Path(args.root), "data root not found")
        result = run_inference(args.config, args.checkpoint, DataSpec.parse(args.data, args.root), args.out,
                               shard_size=args.shard_size, batch_size=args.batch_size, actors=args.actors,
                               resume=args.resume, limit=args.limit, max_shards=args.max_shards, device=args.device,
                               address=args.address, progress=not args.no_progress,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(f"infer: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
