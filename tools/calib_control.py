#!/usr/bin/env python
"""Which of a CalibFormer's corrections come from the camera: the held-out pairs scored as they are, then with
every pair's camera image swapped for another frame's image from the same camera (the LiDAR input unchanged).

    python tools/calib_control.py configs/calibformer/calibformer_flow_sim_cpu.py checkpoints/calibformer_flow_sim_cpu.safetensors

A calibration network must get worse without its own image. Where an error stays as low with another frame's
image, that part was read from the LiDAR alone: on a fixed synthetic rig the scan pattern (rings on the ground
around the LiDAR) gives its pitch, roll and position relative to a camera that is always mounted the same way, so
a network can learn the rig instead of matching the image. Prints (and with ``--json`` writes) the per-axis means
of both runs (``perception.eval.calibration``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from perception.engine.cli import clean_errors  # noqa: E402

KEYS = ("rot_geodesic_deg_mean", "rot_pitch_deg_mean", "rot_yaw_deg_mean", "rot_roll_deg_mean",
        "trans_norm_cm_mean", "trans_x_cm_mean", "trans_y_cm_mean", "trans_z_cm_mean")


def swap_images(samples: list, shift: int) -> list:
    """Each sample with the image of the sample ``shift`` places on (the list wraps around), which must be of the
    same camera (token ``<frame>/<camera>``): ``CalibSimDataset`` orders pairs frame-major over its cameras, so a
    shift that is a multiple of the camera count keeps the camera. Everything else (LiDAR, start, truth) is the
    sample's own."""
    n = len(samples)
    if n < 2 or shift % n == 0:
        raise ValueError(f"swap_images: need >= 2 samples and a shift that is not a multiple of {n}, got {shift}")
    out = []
    for i, s in enumerate(samples):
        other = samples[(i + shift) % n].inputs
        if other.token.rsplit("/", 1)[-1] != s.inputs.token.rsplit("/", 1)[-1]:
            raise ValueError(f"swap_images: {s.inputs.token} and {other.token} are not the same camera; "
                             "use a shift that is a multiple of the number of cameras")
        out.append(replace(s, inputs=replace(s.inputs, image=other.image)))
    return out


def estimates(model, samples: list, batch_size: int = 16) -> np.ndarray:
    """``model``'s final camera-from-LiDAR estimates ``[N, 4, 4]`` for ``samples``."""
    import torch

    out = []
    for s in range(0, len(samples), batch_size):
        with torch.no_grad():
            out += [p.cam_from_lidar for p in model(**model.data_preprocessor(samples[s:s + batch_size]), mode="predict")]
    return np.stack(out)


def error_means(extrinsics: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The :data:`KEYS` (per-axis and norm means) of ``extrinsics [N, 4, 4]``'s errors against ``truth [N, 4, 4]``."""
    from perception.eval.calibration import calibration_errors, summarize

    m = summarize(calibration_errors(extrinsics, truth))
    return {k: round(float(m[k]), 3) for k in KEYS}


def means(extrinsics: np.ndarray, samples: list) -> dict[str, float]:
    """:func:`error_means` of ``extrinsics [N, 4, 4]`` against the samples' truth."""
    return error_means(extrinsics, np.stack([s.target.cam_from_lidar for s in samples]))


def print_rows(out: dict, names: tuple[str, ...]) -> None:
    """One line per ``out[name]`` (a :data:`KEYS` dict of means): the name, then each mean."""
    w = max(map(len, names))
    for name in names:
        print(f"{name:>{w}}: " + "  ".join(f"{k.replace('_mean', '')} {v:.2f}" for k, v in out[name].items()))


def write_json(path: Path | None, data: dict) -> None:
    """``data`` as indented JSON at ``path`` (its folder made); nothing for None (no ``--json``)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def held_out_dataset(config: str, seeds: list[int] | None = None):
    """``config``'s test dataset; ``seeds``: other sequences than its own (a ``CalibSimDataset``'s)."""
    from mmengine.config import Config

    ds = dict(Config.fromfile(config).test_dataloader.dataset)
    if seeds is not None:
        ds["seeds"] = list(seeds)
    return ds.pop("type")(**ds)


def held_out(config: str, seeds: list[int] | None = None) -> list:
    """The held-out pairs of ``config``'s test dataloader (``seeds``: :func:`held_out_dataset`), as a list."""
    dataset = held_out_dataset(config, seeds)
    return [dataset[i] for i in range(len(dataset))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--shift", type=int, default=9, help="pair offset of the swapped image (default 9: the same "
                   "camera 3 frames on, with the 3-camera rig)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    from perception.pipeline.model_stage import ModelStage

    model = ModelStage(args.config, args.checkpoint, carry=False).model
    samples = held_out(args.config)
    out = {"pairs": len(samples), "initial": means(np.stack([s.inputs.init for s in samples]), samples),
           "own image": means(estimates(model, samples), samples),
           "another frame's image": means(estimates(model, swap_images(samples, args.shift)), samples)}
    print_rows(out, ("initial", "own image", "another frame's image"))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    with clean_errors("calib_control.py"):
        sys.exit(main())
