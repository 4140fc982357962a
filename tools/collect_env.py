#!/usr/bin/env python
"""Print the environment for bug reports: versions of the stack, whether mmcv's ops load, CPU/GPU facts."""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys


def version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - report any import failure as it is
        return f"not importable ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", "unknown version"))


def mmcv_ops() -> str:
    try:
        from mmcv.ops import Voxelization  # noqa: F401
        import mmcv.ops  # noqa: F401
        from mmcv.utils import ext_loader

        ext_loader.load_ext("_ext", ["hard_voxelize_forward", "dynamic_voxelize_forward", "nms_rotated"])
        return "yes (compiled _ext loads)"
    except Exception as e:  # noqa: BLE001
        return f"NO ({type(e).__name__}: {e}) - rebuild with MMCV_WITH_OPS=1 (make install)"


def collect() -> list[tuple[str, str]]:
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("CPU", platform.processor() or platform.machine()),
        ("CPU count", str(os.cpu_count())),
    ]
    try:
        import torch

        rows += [
            ("torch", torch.__version__),
            ("torch threads", str(torch.get_num_threads())),
            ("CUDA available", str(torch.cuda.is_available())),
        ]
        if torch.cuda.is_available():
            rows += [(f"GPU {i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
            rows.append(("torch CUDA", str(torch.version.cuda)))
    except Exception as e:  # noqa: BLE001
        rows.append(("torch", f"not importable ({e})"))
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
        rows.append(("nvcc", nvcc[-1] if nvcc else "not found"))
    except (OSError, subprocess.TimeoutExpired):
        rows.append(("nvcc", "not found"))
    for name in ("numpy", "spconv", "mmengine", "mmcv", "mmdet", "mmdet3d", "numba", "open3d", "ray", "rosbags", "mcap", "cv2", "perception"):
        rows.append((name, version(name)))
    rows.append(("mmcv ops", mmcv_ops()))
    return rows


def main() -> int:
    rows = collect()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
