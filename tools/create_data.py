#!/usr/bin/env python
"""Create datasets on disk. Subcommand ``sim``: sequences of the synthetic world, with all ground truth.

    python tools/create_data.py sim --sequences 10 --frames 40 --seed 0 --out data/sim \\
        [--workers 2] [--lidar hdl64|waymo_top] [--rigs navsim fisheye] [--mmdet3d-infos] [--split 0.8 0.1 0.1]

Sequence ``i`` is simulated from seed ``S + i``; one process per sequence (``--workers`` processes,
``0`` runs in this process), numba limited to one thread per worker. The files depend only on the
seeds and the options, not on ``--workers``. Read the result with
``perception.data.sim.SimReader(OUT, split)`` or ``open_reader("sim", OUT, split=...)``.

Layout (details in :mod:`perception.data.sim`)::

    OUT/dataset.json                 config, class names, splits {train,val,test: [sequence names]}
                                     (split by sequence), format version; written last
    OUT/seq_<seed:05d>/calib.json    rig: ego_from_sensor 4x4 per sensor, camera models via camera_io,
                                     depth kind (z/range) per camera
    OUT/seq_<seed:05d>/frames.json   per frame: token, timestamp, ego pose 4x4, ego speed/accel/yaw rate,
                                     file paths relative to the sequence folder
    OUT/seq_<seed:05d>/lidar/<k:04d>.bin          float32 x6 (x, y, z, intensity, ring, time)
    OUT/seq_<seed:05d>/camera/<CAM>/<k:04d>.jpg   quality 92
    OUT/seq_<seed:05d>/depth/<CAM>/<k:04d>.png    uint16, metres x 256 (0 = no depth), KITTI convention
    OUT/seq_<seed:05d>/semantic/<CAM>/<k:04d>.png uint8 class ids
    OUT/seq_<seed:05d>/bev/<k:04d>.png            uint8 BEV class map
    OUT/seq_<seed:05d>/labels/<k:04d>.json        boxes [N,9], labels, track ids, attributes, ego future,
                                                  command, agent futures

``--split TRAIN VAL TEST`` fractions are applied to the sequences in seed order (largest-remainder
rounding, so the counts add up to ``--sequences``; tiny datasets may leave a split empty).

``--mmdet3d-infos`` also writes ``OUT/sim_infos_{train,val,test}.pkl`` in mmdet3d's v2 info format
(``{"metainfo": {"categories": {"Car": 0, "Pedestrian": 1, "Cyclist": 2}, "dataset": "perception_sim",
"info_version": "1.1"}, "data_list": [...]}``), one entry per frame:

* ``lidar_points``: ``lidar_path`` relative to OUT, ``num_pts_feats`` 6, ``lidar2ego`` 4x4;
* ``ego2global`` (world_from_ego) 4x4, ``timestamp`` (s), ``token``, ``sample_idx``;
* ``images``: **pinhole cameras only**, ``{CAM: {img_path (relative to OUT), cam2img 3x3, lidar2cam
  4x4, lidar2img 4x4, cam2ego 4x4, height, width, timestamp}}``. Fisheye cameras cannot be described
  by ``cam2img`` and would break mmdet3d's multi-view pipelines, so they are left out of ``images``
  and recorded under the extra top-level key ``fisheye_images`` ``{CAM: {img_path, camera_model
  (perception.geometry.camera_io dict), lidar2cam, cam2ego, height, width, timestamp}}``, which
  mmdet3d ignores;
* ``instances``: ``bbox_3d`` ``[x, y, z, dx, dy, dz, yaw]`` in the LiDAR frame, bottom centre
  (mmdet3d's ``LiDARInstance3DBoxes`` convention), ``bbox_label_3d``, ``velocity [vx, vy]`` (LiDAR
  frame), ``num_lidar_pts``, ``bbox_3d_isvalid`` (the sim's ``visible``), ``track_id``.

With mmdet3d use ``data_root=OUT`` and empty data prefixes (``data_prefix=dict(pts="", img="")``;
paths already start at OUT) and ``metainfo=dict(classes=("Car", "Pedestrian", "Cyclist"))``. Our
``Mmdet3dInfoReader(OUT/"sim_infos_train.pkl", dataset="nuscenes", fields=LIDAR_FIELDS)`` reads them
back, boxes moved into the ego frame through ``lidar2ego``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from perception.data import sim as simfmt  # noqa: E402


# -- splits ----------------------------------------------------------------------------------------------
def split_counts(n: int, fractions) -> list[int]:
    """``n`` items over fractions (normalised) by largest remainder; ties go to the earlier split."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or not f.sum() > 0:
        raise ValueError(f"--split: three non-negative fractions (train val test) with a positive sum, got {list(fractions)}")
    exact = n * f / f.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_sequences(names: list[str], fractions) -> dict[str, list[str]]:
    c = split_counts(len(names), fractions)
    return {"train": names[: c[0]], "val": names[c[0]: c[0] + c[1]], "test": names[c[0] + c[1]:]}


# -- workers ---------------------------------------------------------------------------------------------
_progress_queue = None


def _init_worker(queue) -> None:
    import numba

    global _progress_queue
    numba.set_num_threads(1)
    _progress_queue = queue


def _write_sequence_task(seed: int, config, out: str) -> dict:
    return simfmt.write_sequence(seed, config, out, progress=lambda n: _progress_queue.put(n))


def _drain(queue, bar) -> None:
    import queue as queue_mod

    while True:
        try:
            bar.update(queue.get_nowait())
        except queue_mod.Empty:
            return


def write_sequences(seeds: list[int], config, out: Path, workers: int) -> list[dict]:
    """Write every sequence (one task each); results in seed order."""
    total = len(seeds) * config.frames
    with tqdm(total=total, desc="sim frames", unit="frame") as bar:
        if workers <= 0:
            return [simfmt.write_sequence(s, config, out, progress=bar.update) for s in seeds]
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process whose numba threads may already run
        queue = ctx.Queue()
        with ProcessPoolExecutor(min(workers, len(seeds)) or 1, mp_context=ctx,
                                 initializer=_init_worker, initargs=(queue,)) as ex:
            futures = [ex.submit(_write_sequence_task, s, config, str(out)) for s in seeds]
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(queue, bar)
                    for f in done:
                        f.result()  # raise the first failure now
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            results = [f.result() for f in futures]
        _drain(queue, bar)
        bar.update(total - bar.n)
        return results


# -- dataset.json -------------------------------------------------------------------------------------
def config_to_dict(config) -> dict:
    from dataclasses import asdict

    d = asdict(config)
    d["rigs"] = list(d["rigs"])
    return d


def dataset_dict(config, seeds: list[int], results: list[dict], fractions) -> dict:
    from perception.sim import world as W
    from perception.sim.scene import COMMANDS

    names = [r["name"] for r in results]
    return {
        "format": simfmt.FORMAT, "format_version": simfmt.FORMAT_VERSION,
        "generator": "tools/create_data.py sim",
        "config": config_to_dict(config),
        "first_seed": int(seeds[0]) if seeds else None,
        "class_names": list(W.CLASS_NAMES), "box_classes": list(W.BOX_CLASSES), "commands": list(COMMANDS),
        "lidar": simfmt.LIDAR, "lidar_fields": list(simfmt.LIDAR_FIELDS), "depth_scale": simfmt.DEPTH_SCALE,
        "sequences": [{k: r[k] for k in ("name", "seed", "layout", "frames")} for r in results],
        "split_fractions": [float(x) for x in fractions],
        "splits": split_sequences(names, fractions),
    }


# -- mmdet3d infos -------------------------------------------------------------------------------------
def _info_for_frame(seq: str, calib, entry: dict, labels: dict, sample_idx: int) -> dict:
    from perception.geometry.camera_io import camera_to_dict
    from perception.geometry.cameras import PinholeCamera

    lidar = simfmt.LIDAR
    ego_from_lidar = calib.ego_from_sensor[lidar]
    lidar_from_ego = ego_from_lidar.inverse()
    files = entry["files"]
    t = float(entry["timestamp"])
    images, fisheyes = {}, {}
    for cam, rel in files["cameras"].items():
        model = calib.cameras[cam]
        lidar2cam = calib.transform(cam, lidar).matrix
        rec = {"img_path": f"{seq}/{rel}", "lidar2cam": lidar2cam.tolist(),
               "cam2ego": calib.ego_from_sensor[cam].matrix.tolist(),
               "height": model.height, "width": model.width, "timestamp": t}
        if isinstance(model, PinholeCamera) and not any(model.dist):
            view = np.eye(4)
            view[:3, :3] = model.K
            images[cam] = {**rec, "cam2img": model.K.tolist(), "lidar2img": (view @ lidar2cam).tolist()}
        else:
            fisheyes[cam] = {**rec, "camera_model": camera_to_dict(model)}
    boxes = labels["boxes"].transform(lidar_from_ego, lidar)
    visible = labels["attributes"].get("visible", np.ones(len(boxes), bool))
    n_pts = labels["attributes"].get("num_lidar_pts", np.zeros(len(boxes), np.int64))
    instances = []
    for j in range(len(boxes)):
        b = boxes.tensor[j]
        label = int(boxes.labels[j])
        instances.append({
            "bbox_3d": [float(v) for v in b[:7]], "bbox_label_3d": label, "bbox_label": label,
            "velocity": [float(b[7]), float(b[8])], "num_lidar_pts": int(n_pts[j]),
            "bbox_3d_isvalid": bool(visible[j]), "track_id": int(boxes.track_ids[j]),
        })
    info = {
        "sample_idx": sample_idx, "token": entry["token"], "timestamp": t,
        "ego2global": np.asarray(entry["ego_pose"], dtype=np.float64).tolist(),
        "lidar_points": {"num_pts_feats": len(simfmt.LIDAR_FIELDS), "lidar_path": f"{seq}/{files['lidar']}",
                         "lidar2ego": ego_from_lidar.matrix.tolist()},
        "images": images,
        "instances": instances,
    }
    if fisheyes:
        info["fisheye_images"] = fisheyes
    return info


def write_mmdet3d_infos(out: Path, ds: dict) -> dict[str, Path]:
    """``OUT/sim_infos_{train,val,test}.pkl`` from the files already written (see the module docstring)."""
    box_classes = tuple(ds["box_classes"])
    written = {}
    for split in simfmt.SPLITS:
        data_list = []
        for seq in ds["splits"][split]:
            calib, _ = simfmt.read_calib(out / seq)
            frames = simfmt.read_json(out / seq / "frames.json")["frames"]
            for entry in frames:
                labels = simfmt.read_labels(out / seq / entry["files"]["labels"], box_classes)
                data_list.append(_info_for_frame(seq, calib, entry, labels, len(data_list)))
        infos = {
            "metainfo": {"categories": {c: i for i, c in enumerate(box_classes)}, "dataset": "perception_sim",
                         "version": f"{simfmt.FORMAT}-{simfmt.FORMAT_VERSION}", "info_version": "1.1"},
            "data_list": data_list,
        }
        path = out / f"sim_infos_{split}.pkl"
        simfmt.atomic_write_bytes(path, pickle.dumps(infos, protocol=4))
        written[split] = path
    return written


# -- command line ----------------------------------------------------------------------------------------
def create_sim(args: argparse.Namespace) -> dict:
    from perception.sim.scene import SimConfig

    if args.sequences < 1 or args.frames < 1:
        raise SystemExit("create_data.py sim: --sequences and --frames must be >= 1")
    try:  # unknown LiDAR / rig names and bad split fractions fail here, before any work
        config = SimConfig(frames=args.frames, lidar=args.lidar, rigs=tuple(args.rigs))
        config.beam_pattern(), config.cameras()
        split_counts(args.sequences, args.split)
    except ValueError as e:
        raise SystemExit(f"create_data.py sim: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(args.sequences)]
    t0 = time.perf_counter()
    results = write_sequences(seeds, config, out, args.workers)
    ds = dataset_dict(config, seeds, results, args.split)
    simfmt.atomic_write_json(out / "dataset.json", ds)
    if args.mmdet3d_infos:
        write_mmdet3d_infos(out, ds)
    summary = {"out": str(out), "sequences": len(results), "frames": sum(r["frames"] for r in results),
               "points": sum(r["points"] for r in results), "boxes": sum(r["boxes"] for r in results),
               "splits": {k: len(v) for k, v in ds["splits"].items()}, "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sim", help="sequences of the synthetic world (layout in the module docstring)")
    s.add_argument("--sequences", type=int, default=1, help="number of sequences (seeds SEED, SEED+1, ...)")
    s.add_argument("--frames", type=int, default=40, help="frames per sequence (10 Hz)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first sequence")
    s.add_argument("--out", type=Path, required=True, help="dataset folder")
    s.add_argument("--workers", type=int, default=2, help="processes, one sequence each (0: in this process)")
    s.add_argument("--lidar", choices=("hdl64", "waymo_top"), default="hdl64")
    s.add_argument("--rigs", nargs="*", default=["navsim", "fisheye"], help="camera rigs (navsim, nuscenes, fisheye)")
    s.add_argument("--mmdet3d-infos", action="store_true", help="also write sim_infos_{train,val,test}.pkl for mmdet3d")
    s.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of the sequences per split (by sequence)")
    args = ap.parse_args(argv)
    if args.command == "sim":
        create_sim(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
