#!/usr/bin/env python
"""The README's PFDepth figure: one held-out synthetic frame, per camera: image | ground truth | PFDepth | baseline.

    python tools/pfdepth_figure.py --out docs/pfdepth_sim.jpg

Depth is coloured by inverse depth (near red, far blue; black: no depth or outside the field of view).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perception.viz.depth import depth_to_rgb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs/pfdepth/pfdepth_sim_cpu.py")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/pfdepth_sim_cpu.safetensors")
    ap.add_argument("--seed", type=int, default=1000, help="a held-out sequence")
    ap.add_argument("--index", type=int, default=2, help="sample within it")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/pfdepth_sim.jpg")
    args = ap.parse_args(argv)
    from mmengine.config import Config
    from PIL import Image

    from perception.pipeline.model_stage import ModelStage, build_model

    cfg = Config.fromfile(str(args.config))
    ds_cfg = dict(cfg.val_dataloader.dataset)
    ds_cfg["seeds"] = [args.seed]
    sample = build_model(ds_cfg)[args.index]
    model = ModelStage(args.config, args.checkpoint).model
    out = model.predict_depth([sample.frame])[0]
    rows = []
    for name, dm in out.maps.items():
        img = sample.frame.cameras[name].image
        gt = sample.targets.depth[name].depth
        tiles = [img, depth_to_rgb(gt), depth_to_rgb(dm), depth_to_rgb(out.baseline[name])]
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows], 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST).save(args.out, quality=90)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
