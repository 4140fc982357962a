"""Train a model from an mmengine config (the flags mmdet3d users know).

    python tools/train.py configs/bev_center/bev_center_sim.py
    python tools/train.py CONFIG --resume                      # from work_dir/last_checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/epoch_3.pth
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch
    python tools/train.py CONFIG --launcher ray --num-workers 2   # Ray Train TorchTrainer

Checkpoints are written atomically and loaded without running pickled code (see
perception/engine/runner.py); ``--unsafe-load`` lifts that for a checkpoint from an author you trust.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import DictAction  # noqa: E402

from perception.engine.cli import build_train_config, clean_errors, init_torch_distributed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="config file (configs/...)")
    ap.add_argument("--work-dir", help="where logs and checkpoints go (default: the config's work_dir)")
    ap.add_argument("--resume", nargs="?", const="auto", default=None,
                    help="resume from CKPT, or with no value from the work dir's last checkpoint")
    ap.add_argument("--load-from", help="initialise weights from a checkpoint (.pth or .safetensors)")
    ap.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 autocast on CPU)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                    help="override config keys, e.g. train_cfg.max_epochs=2 (keys must exist)")
    ap.add_argument("--launcher", choices=["none", "pytorch", "ray"], default="none")
    ap.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (--launcher ray)")
    ap.add_argument("--unsafe-load", action="store_true",
                    help="allow checkpoints that need arbitrary unpickling (runs their code: trusted files only)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with clean_errors("train.py"):
        options = dict(config=args.config, options=dict(args.cfg_options), work_dir=args.work_dir, amp=args.amp,
                       resume=args.resume, load_from=args.load_from, unsafe_load=args.unsafe_load)
        if args.launcher == "ray":
            from perception.engine.launch import train_on_ray

            result = train_on_ray(options, num_workers=args.num_workers)
            print(f"ray: {args.num_workers} workers, {result['iter']} optimizer steps, epoch {result['epoch']}")
            return 0
        cfg = build_train_config(launcher=args.launcher, **options)
        init_torch_distributed(args.launcher)
        from perception.engine.runner import PerceptionRunner

        import torch.distributed as dist

        try:
            PerceptionRunner.from_cfg(cfg).train()
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # no rank tears down while another is still in its last collective
        finally:  # torchrun: leave the process group before exit, or a rank may abort in gloo's teardown (SIGABRT)
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


def leave(code: int) -> None:
    """Exit with ``code``. A torchrun rank (``LOCAL_RANK`` set) skips the interpreter's finalisation (``os._exit``,
    after flushing the logs and streams; checkpoints are already written): a rank aborted there in gloo's teardown
    ('terminate called without an active exception', SIGABRT) after a finished run, in CI at d25251f and f60a195,
    with the process group destroyed (6dedcdd) and the ranks synchronised first (d8a5b0b)."""
    if "LOCAL_RANK" in os.environ:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    faulthandler.enable()  # a native abort prints every thread's Python stack: where it happened, if it does again
    leave(main())
