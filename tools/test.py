"""Evaluate a checkpoint with a config's test dataloader and metrics (the flags mmdet3d users know).

    python tools/test.py CONFIG CKPT [--out metrics.json] [--show-dir DIR]

``--show-dir`` writes one PNG per frame (ground truth left, predictions right, in BEV).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import DictAction  # noqa: E402

from perception.engine.cli import clean_errors, configure_device, init_torch_distributed, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("checkpoint", help=".pth (safe load) or .safetensors (sha256 checked against its manifest)")
    ap.add_argument("--out", type=Path, help="write the metrics to this JSON file")
    ap.add_argument("--show-dir", help="write prediction pictures here")
    ap.add_argument("--work-dir")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    ap.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    ap.add_argument("--unsafe-load", action="store_true",
                    help="allow checkpoints that need arbitrary unpickling (runs their code: trusted files only)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with clean_errors("test.py"):
        cfg = load_config(args.config, args.cfg_options, args.work_dir)
        configure_device(cfg, args.launcher)
        cfg.load_from, cfg.resume = args.checkpoint, False
        if args.unsafe_load:
            cfg.unsafe_load = True
        if args.show_dir:
            from perception.engine.hooks import DetectionVisHook

            hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") is DetectionVisHook]
            if not hooks:
                raise SystemExit("test.py: error: --show-dir needs a DetectionVisHook in the config's custom_hooks")
            for h in hooks:
                h["show_dir"] = args.show_dir
        if not Path(args.checkpoint).is_file():
            raise SystemExit(f"test.py: error: checkpoint not found: {args.checkpoint}")
        init_torch_distributed(args.launcher)
        from perception.engine.runner import PerceptionRunner

        runner = PerceptionRunner.from_cfg(cfg)
        metrics = runner.test()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({k: float(v) for k, v in metrics.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
