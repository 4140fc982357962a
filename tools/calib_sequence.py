#!/usr/bin/env python
"""CalibFormer over whole sequences, as tools/calibrate.py uses it, on a config's held-out synthetic pairs: one
miscalibration per rig (a held-out sequence's camera, whose frames share one mount), drawn ``--draws`` times, and
each rig's frames calibrated together by
:func:`perception.models.calibformer.calibrate.calibrate_samples` (per-frame estimates, their median, and for an
aligned model one alignment of the median over all the frames).

    python tools/calib_sequence.py configs/calibformer/calibformer_align_jitter_sim_cpu.py work_dirs/calibformer_align_jitter_sim_cpu/epoch_5.pth

Prints (and with ``--json`` writes) the per-axis means over the rigs of the start, of the frames one at a time, of
their median and of the sequence's estimate, how many joint alignments were refused, and how the spread each
estimate reports compares with its actual error (:func:`spread_check`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from perception.engine.cli import clean_errors  # noqa: E402
from tools.calib_control import error_means, held_out, held_out_dataset, print_rows, write_json  # noqa: E402


def rigs(samples: list) -> dict[tuple[str, str], list]:
    """``samples`` grouped by rig: (sequence, camera) from the token ``<sequence>_<frame>/<camera>`` (the synthetic
    world's), in order. Every rig's pairs must share their true extrinsic."""
    out: dict[tuple[str, str], list] = {}
    for s in samples:
        frame, _, camera = s.inputs.token.rpartition("/")
        seq, sep, _ = frame.rpartition("_")
        if not (sep and camera):
            raise ValueError(f"rigs: token {s.inputs.token!r} is not <sequence>_<frame>/<camera>")
        out.setdefault((seq, camera), []).append(s)
    for key, ss in out.items():
        truth = np.stack([s.target.cam_from_lidar for s in ss])
        if np.abs(truth - truth[0]).max() > 1e-9:
            raise ValueError(f"rigs: the frames of {key} do not share one true extrinsic")
    return out


def spread_check(estimates: np.ndarray, truth: np.ndarray, spread: list) -> dict | None:
    """How the rigs' reported ``spread`` (``[6]`` each, deg / cm about and along the camera axes, or None) compares
    with their actual errors (``estimates``, ``truth`` ``[R, 4, 4]``; the rotation vector of R_est R_true^T, the
    translation difference): per axis the median spread (an axis nothing constrains has an infinite one), the mean
    |error|, the median of |error| / spread, and the fraction within 1 and 2 spreads (0.68 and 0.95 if it were the
    error's standard deviation); ``unconstrained``: per axis, the rigs whose spread is infinite."""
    from perception.models.calibformer.geometry import Miscalibration

    keep = [i for i, s in enumerate(spread) if s is not None]
    if not keep:
        return None
    sd = np.stack([spread[i] for i in keep])
    err = np.abs(np.stack([Miscalibration.between(truth[i], estimates[i]).axes() for i in keep]))
    ratio = err / np.maximum(sd, 1e-12)
    axes = [f"{k}_{a}" for k in ("rot_deg", "trans_cm") for a in "xyz"]
    row = lambda v: dict(zip(axes, np.round(v, 3).tolist()))  # noqa: E731
    return {"rigs": len(keep), "spread": row(np.median(sd, 0)), "error": row(err.mean(0)),
            "unconstrained": {a: int(n) for a, n in zip(axes, np.isinf(sd).sum(0))},
            "median_ratio": row(np.median(ratio, 0)), "within_1": row((ratio < 1).mean(0)),
            "within_2": row((ratio < 2).mean(0)), "median_ratio_all": round(float(np.median(ratio)), 3)}


def parallax_views(config: str, seeds: list[int] | None = None) -> dict:
    """The :class:`~perception.models.calibformer.parallax.ParallaxView` of every held-out pair of ``config`` (its
    test dataset, a ``CalibSimDataset``; ``seeds``: other sequences), by the pair's token: the same frames at the
    cameras' full resolution, with the moving road users' points left out where the dataset leaves them out."""
    from tqdm import tqdm

    from perception.models.calibformer.parallax import parallax_view

    dataset = held_out_dataset(config, seeds)
    out = {}
    for sample in tqdm(dataset.sim_samples(), total=len(dataset.seeds) * dataset.frames, desc="parallax views",
                       unit="frame"):
        movers = sample.targets.boxes.tensor if dataset.drop_moving else None
        for cam in dataset.cameras:
            v = parallax_view(sample.frame, cam, movers=movers)
            out[v.token] = v
    return out


def evaluate(model, samples: list, draws: int = 3, max_deg: float = 10.0, max_m: float = 0.25, seed: int = 0,
             progress: bool = False, views: dict | None = None) -> dict:
    """Per-axis means (``calib_control.error_means``) over ``draws`` miscalibrations of every rig of ``samples``, of:
    ``initial``, ``per_frame`` (every frame's own estimate), ``median`` (of a rig's frames) and ``sequence`` (the
    rig's estimate); ``rigs``, ``estimates``, ``refused`` (joint alignments refused; None for a model without);
    ``spread``: :func:`spread_check` of the sequences' estimates. ``views``: :func:`parallax_views` of the samples,
    to refine every rig's estimate by motion parallax; then ``before_parallax`` is the estimate before that step,
    ``parallax_taken`` how many refinements moved it, and ``parallax_worse`` how many ended further from the truth
    (translation) than they started. ``progress``: a bar over the rigs' estimates."""
    from tqdm import tqdm

    from perception.models.calibformer.calibrate import calibrate_samples, median_correction
    from perception.models.calibformer.geometry import Miscalibration, sample_miscalibration

    found = rigs(samples)
    est: dict[str, list] = {"initial": [], "median": [], "sequence": [], "truth": [], "before_parallax": []}
    taken, worse = 0, 0
    frames, frame_truth, refused, spread = [], [], 0, []
    bar = tqdm(total=len(found) * draws, desc="rig estimates", unit="rig", disable=not progress)
    for r, ss in enumerate(found.values()):
        truth = ss[0].target.cam_from_lidar
        for d in range(draws):
            init = sample_miscalibration(np.random.default_rng([seed, r, d]), max_deg, max_m).apply(truth)
            batch = [replace(s, inputs=replace(s.inputs, init=init)) for s in ss]
            seq, per, aligned, sd, par = calibrate_samples(
                model, batch, init, parallax=None if views is None else [views[s.inputs.token] for s in ss])
            refused += aligned is False
            if par is not None:
                est["before_parallax"].append(par.start)
                taken += par.taken
                worse += (np.linalg.norm(par.estimate[:3, 3] - truth[:3, 3])
                          > np.linalg.norm(par.start[:3, 3] - truth[:3, 3]))
            spread.append(sd)
            med = median_correction([Miscalibration.between(init, p) for p in per]).apply(init)
            for k, v in (("initial", init), ("median", med), ("sequence", seq), ("truth", truth)):
                est[k].append(v)
            frames.append(per)
            frame_truth += [truth] * len(per)
            bar.update()
    bar.close()
    truth = np.stack(est["truth"])
    extra = {} if views is None else {"before_parallax": error_means(np.stack(est["before_parallax"]), truth),
                                      "parallax_taken": taken, "parallax_worse": int(worse)}
    return {"rigs": len(found), "estimates": len(truth), "refused": refused if hasattr(model, "align_sequence") else None,
            **extra,
            "initial": error_means(np.stack(est["initial"]), truth),
            "per_frame": error_means(np.concatenate(frames), np.stack(frame_truth)),
            "median": error_means(np.stack(est["median"]), truth),
            "sequence": error_means(np.stack(est["sequence"]), truth),
            "spread": spread_check(np.stack(est["sequence"]), truth, spread)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--draws", type=int, default=3, help="miscalibrations per rig (default 3)")
    p.add_argument("--range", nargs=2, type=float, default=(10.0, 0.25), metavar=("DEG", "M"),
                   help="per-axis bound of the miscalibrations (default 10 deg, 0.25 m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", help="other synthetic sequences than the config's held-out ones "
                   "(e.g. 2000 2001 2002 2003, which no config trains or scores on)")
    p.add_argument("--parallax", action="store_true",
                   help="refine every rig's estimate by motion parallax over its frames (full-resolution renders)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error("--draws must be at least 1")
    import torch

    from perception.pipeline.model_stage import ModelStage

    model = ModelStage(args.config, args.checkpoint, carry=False).model
    views = parallax_views(args.config, args.seeds) if args.parallax else None
    with torch.no_grad():
        out = evaluate(model, held_out(args.config, args.seeds), args.draws, *args.range, seed=args.seed, progress=True,
                       views=views)
    print(f"{out['rigs']} rigs x {args.draws} draws; joint alignments refused: {out['refused']}")
    rows = ("initial", "per_frame", "median", "sequence")
    if views is not None:
        rows = ("initial", "per_frame", "median", "before_parallax", "sequence")
        print(f"parallax refinements taken: {out['parallax_taken']}, ending further from the true offset than they "
              f"started: {out['parallax_worse']}")
    print_rows(out, rows)
    if out["spread"]:
        for k in ("spread", "error", "median_ratio", "within_2", "unconstrained"):
            print(f"{'spread ' + k:>19}: " + "  ".join(f"{a} {v:.2f}" for a, v in out["spread"][k].items()))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    with clean_errors("calib_sequence.py"):
        sys.exit(main())
