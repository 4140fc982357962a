#!/usr/bin/env python
"""Publish a training checkpoint's weights as ``.safetensors`` with a sha256 manifest (mmdet's name).

    python tools/publish_model.py work_dirs/bev_center/epoch_12.pth out/models --name bev_center_kitti

Writes ``OUT_DIR/NAME.safetensors`` (default NAME: the checkpoint's stem) and adds its entry to
``OUT_DIR/manifest.json``; prints the file and its sha256. The ``.pth`` is loaded without running
pickled code unless ``--unsafe-load`` is given. Exit code 2 when the checkpoint is missing,
corrupt or unsafe.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.engine.checkpoint import CheckpointError, export_safetensors, verify_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the .pth checkpoint to publish")
    parser.add_argument("out_dir", help="directory for NAME.safetensors and manifest.json")
    parser.add_argument("--name", default=None, help="file stem of the published weights (default: checkpoint stem)")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="unpickle the checkpoint in full, which can run code it holds: only for files from "
                             "an author you trust")
    args = parser.parse_args(argv)
    try:
        out = export_safetensors(args.checkpoint, args.out_dir, name=args.name, trust=args.unsafe_load)
        entry = verify_manifest(out)
    except CheckpointError as e:
        print(f"publish_model: error: {e}", file=sys.stderr)
        return 2
    print(out)
    print(f"sha256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
