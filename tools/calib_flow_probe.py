#!/usr/bin/env python
"""How far a CalibFormer's displacement head is from what its PnP step needs, on the held-out pairs.

    python tools/calib_flow_probe.py configs/calibformer/calibformer_flow_jitter_narrow_sim_cpu.py checkpoints/calibformer_flow_jitter_narrow_sim_cpu.safetensors

Every held-out pair is first refined by the network's own iterations (for a cascade: by the stages before
``--stage``); at that estimate the probed network's displacement field is compared with the true one (per 1/4 cell with points: the mean
image displacement of its points between the estimate and the truth, px at the model's input size), and the PnP step
(rotation and offset, from no correction) is fed the head's field and the true field with independent Gaussian noise
of ``--noise`` px per cell. Prints and with ``--json`` writes the mean (median) of: the true displacement, its part
due to the offset alone, the head's displacement, the head's error; and the offset error in cm after the PnP step
from each field. The answer to "is the image's offset signal there, and does the head read it?".
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from perception.engine.cli import clean_errors  # noqa: E402


def probe(net, samples: list, noise=(0.0, 0.5, 1.0, 2.0), batch_size: int = 16, seed: int = 0) -> dict:
    """``net`` (one :class:`CalibFormer` with ``flow=True``) on ``samples`` whose ``inputs.init`` is where it starts.
    → ``{"field": {name: [mean, median] px}, "pnp_cm": {source: [mean, median] cm}}``."""
    import torch

    from perception.models.calibformer.geometry import Miscalibration

    if net.flow_head is None:
        raise ValueError("calib_flow_probe: the network has no displacement head (flow=False)")
    gen = torch.Generator().manual_seed(seed)
    field: dict[str, list] = {"true": [], "offset part": [], "head": [], "head error": []}
    pnp: dict[str, list] = {"start": [], "head": [], **{f"true + {s:g} px": [] for s in noise}}

    def offset_cm(est, gt):
        return [float(np.linalg.norm(Miscalibration.between(e, g).translation)) * 100 for e, g in zip(est, gt)]

    for i in range(0, len(samples), batch_size):
        data = net.data_preprocessor(samples[i:i + batch_size])
        b = data["inputs"]
        _, _, gt = net.targets(b, data["data_samples"])
        with torch.no_grad():
            _, _, flow, logb = net.heads(b.image, net.depth(b, b.init), b.cameras)
        h, w = flow.shape[-2:]
        true, hit = net.flow_targets(b, gt, h, w)
        rot_only = gt.clone()
        rot_only[:, :3, 3] = b.init[:, :3, 3]  # the true rotation with the current offset
        true_rot, _ = net.flow_targets(b, rot_only, h, w)
        for k in range(len(b.points)):
            m = hit[k, 0]
            field["true"].append(true[k].norm(dim=0)[m].mean().item())
            field["offset part"].append((true[k] - true_rot[k]).norm(dim=0)[m].mean().item())
            field["head"].append(flow[k].norm(dim=0)[m].mean().item())
            field["head error"].append((flow[k] - true[k]).norm(dim=0)[m].mean().item())
        n = len(b.points)
        ident, zero = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), torch.zeros(n, 3)
        gt_np = gt.numpy()
        pnp["start"] += offset_cm(b.init.numpy(), gt_np)
        pnp["head"] += offset_cm(net.pnp_refine(b, b.init, ident, zero, flow, logb).numpy(), gt_np)
        exact = torch.where(hit, 0.0, 30.0).float()  # the cells with points, equally weighted
        for s in noise:
            noisy = true + s * torch.randn(true.shape, generator=gen)
            pnp[f"true + {s:g} px"] += offset_cm(net.pnp_refine(b, b.init, ident, zero, noisy, exact).numpy(), gt_np)
    agg = {name: [round(float(np.mean(v)), 3), round(float(np.median(v)), 3)] for name, v in field.items()}
    return {"pairs": len(samples), "field": agg,
            "pnp_cm": {name: [round(float(np.mean(v)), 2), round(float(np.median(v)), 2)] for name, v in pnp.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--stage", type=int, default=-1, help="for a cascade: the stage to probe (default the last)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0], help="px of noise on the true field")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    from perception.models.calibformer.cascade import CalibCascade
    from perception.pipeline.model_stage import ModelStage

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calib_control import estimates, held_out, write_json

    model = ModelStage(args.config, args.checkpoint, carry=False).model.eval()
    stages = list(model.stages) if isinstance(model, CalibCascade) else [model]
    if not -len(stages) <= args.stage < len(stages):
        p.error(f"--stage {args.stage}: the model has {len(stages)} stage(s)")
    k = args.stage % len(stages)
    samples = held_out(args.config)
    # a cascade's stage is probed where the stages before it leave the pairs; a single network where its own
    # iterations leave them (what a further step would start from)
    for before in stages[:k] if len(stages) > 1 else stages:
        samples = [replace(s, inputs=replace(s.inputs, init=e)) for s, e in zip(samples, estimates(before, samples))]
    out = probe(stages[k], samples, tuple(args.noise))
    for name, (mean, med) in out["field"].items():
        print(f"{'displacement, ' + name:>28}: {mean:.2f} px (median {med:.2f})")
    for name, (mean, med) in out["pnp_cm"].items():
        print(f"{'offset after PnP, ' + name:>28}: {mean:.1f} cm (median {med:.1f})")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    with clean_errors("calib_flow_probe.py"):
        sys.exit(main())
