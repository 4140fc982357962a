"""The pipeline assembled: samples → synchronizer → LiDAR / camera preprocessing → models → sinks.

``run_pipeline`` is what ``tools/demo.py`` runs: the same stages in process (``workers=0``) or one
Ray actor per stage (``workers>=1``, :mod:`perception.pipeline.ray_stream`): one for the LiDAR
rig and one per camera, side by side on each frame, then one per model, chained (a detector, then
a planner that takes the detector's boxes: :class:`ModelStage`). The synchronizer runs
in the driver (it owns the sensor-message stream); ground truth, which must never reach a model,
stays in the driver too and is joined back to each frame's prediction by token for the sinks.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from perception.geometry.grid import VoxelGrid
from perception.pipeline.camera import CameraConfig, CameraPreprocess
from perception.pipeline.lidar import LidarConfig, LidarPreprocess
from perception.pipeline.model_stage import FramePrediction, ModelStage
from perception.pipeline.runner import Summary, run_inprocess, synchronized_frames
from perception.pipeline.sinks import McapSink, MultiSink, PngSink, PredictionTable, SinkItem
from perception.structures import Sample, Targets

ROOT = Path(__file__).resolve().parents[2]
# MSF (4 frames; the model stage keeps the earlier ones), trained on the synthetic world (README: "MSF")
DETECTOR = (ROOT / "configs/msf/msf_sim_cpu.py", ROOT / "checkpoints/msf_sim_cpu.safetensors")
# GaussianFusion, planning from the 3 front cameras and the LiDAR after MSF (the model stage chains them;
# the released weights take no agent tokens: max_agents=0), trained on the synthetic world (README: "GaussianFusion")
PLANNER = (ROOT / "configs/gaussian_fusion/gaussian_fusion_sim_cpu.py",
           ROOT / "checkpoints/gaussian_fusion_sim_cpu.safetensors")
# PFDepth, depth for 2 pinholes + 2 fisheyes from one Gaussian-splatted volume, after the planner (README: "PFDepth")
DEPTH = (ROOT / "configs/pfdepth/pfdepth_sim_cpu.py", ROOT / "checkpoints/pfdepth_sim_cpu.safetensors")
DEFAULT_MODELS = (DETECTOR, PLANNER, DEPTH)


@dataclass(frozen=True)
class PipelineConfig:
    """What to run: the voxel grid and sweeps of LiDAR preprocessing, camera size, models, sync tolerance."""

    grid: VoxelGrid = field(default_factory=lambda: VoxelGrid(-50.0, -50.0, -3.0, 50.0, 50.0, 5.0, (0.2, 0.2, 0.2)))
    num_sweeps: int = 3
    camera_size: tuple[int, int] | None = None
    models: tuple[tuple[Path, Path], ...] = DEFAULT_MODELS  # (config, checkpoint) pairs
    sync_tolerance: float = 0.05
    png_every: int = 5
    # CalibFormer extrinsic-health check in the driver: (config, checkpoint) or None; see run_pipeline
    extrinsic_check: tuple[Path, Path] | None = None
    extrinsic_check_every: int = 5


def stage_factories(cfg: PipelineConfig, cameras: tuple[str, ...]) -> tuple[list, list[str], list[list[int]]]:
    """Zero-argument factories (an actor builds its own stage), their names, and the chain's groups.

    The LiDAR stage (all of the rig's LiDARs, merged in one place) and one stage per camera work
    side by side on each frame; the models get their outputs merged, one after another, each model
    stage passing the frame on to the next (:class:`ModelStage`: detector, then planner).
    """
    factories = [functools.partial(LidarPreprocess, LidarConfig(grid=cfg.grid, num_sweeps=cfg.num_sweeps))]
    names = ["lidar_preprocess"]
    for cam in cameras:
        factories.append(functools.partial(CameraPreprocess, CameraConfig(size=cfg.camera_size), (cam,)))
        names.append(f"camera:{cam}")
    groups = [list(range(len(factories)))]
    for i, (config, ckpt) in enumerate(cfg.models):
        groups.append([len(factories)])
        factories.append(functools.partial(ModelStage, str(config), str(ckpt), carry=i < len(cfg.models) - 1))
        names.append(f"model:{Path(config).stem}")
    return factories, names, groups


def _keep_targets(samples: Iterable[Sample], store: dict[str, Targets | None]) -> Iterator[Sample]:
    for s in samples:
        store[s.frame.token] = s.targets
        yield s


def run_pipeline(samples: Iterable[Sample], calib, reference: str, out: Path, cfg: PipelineConfig | None = None,
                 workers: int = 1, total: int | None = None, with_cameras: bool = True) -> dict:
    """Stream ``samples`` through the pipeline; write ``out/predictions.parquet``, ``out/demo.mcap``, PNGs.

    ``reference``: the LiDAR whose timestamps define the frames. Returns the run summary as a dict
    (per-stage latency and throughput, errors with frame tokens, sync counts, sink outputs).
    """
    cfg = cfg or PipelineConfig()
    out.mkdir(parents=True, exist_ok=True)
    targets: dict[str, Targets | None] = {}
    sync, stream = synchronized_frames(_keep_targets(samples, targets), calib, reference,
                                       tolerance=cfg.sync_tolerance, with_cameras=with_cameras)
    sinks = MultiSink(PredictionTable(out / "predictions.parquet"), McapSink(out / "demo.mcap"),
                      PngSink(out / "png", every=cfg.png_every))
    return run_frames(stream, sync, calib, sinks, cfg, workers, total, with_cameras, targets)


def run_frames(stream: Iterable, sync, calib, sinks: MultiSink, cfg: PipelineConfig | None = None, workers: int = 1,
               total: int | None = None, with_cameras: bool = True, targets: dict | None = None) -> dict:
    """Synchronized frames (``sync.frames(...)``) through the stages into ``sinks`` (closed at the end).

    ``targets``: ground truth by frame token, joined back for the sinks (filled while ``stream`` runs).
    Returns the run summary as :func:`run_pipeline` does.
    """
    cfg = cfg or PipelineConfig()
    targets = {} if targets is None else targets
    frames: dict = {}
    health = None  # CalibFormer's extrinsic-health check on the driver's frames (cfg.extrinsic_check)
    if cfg.extrinsic_check is not None:
        from perception.models.calibformer.calibrate import Calibrator, ExtrinsicHealthCheck

        health = ExtrinsicHealthCheck(Calibrator(*cfg.extrinsic_check), every=cfg.extrinsic_check_every)

    def remember(it):
        for f in it:
            frames[f.token] = f
            if health is not None:
                health(f)
            yield f

    def sink(pred) -> None:  # joins the driver-side frame and ground truth back by token
        token = pred.token if isinstance(pred, FramePrediction) else pred.frame.token
        sinks(SinkItem(frames.pop(token), pred if isinstance(pred, FramePrediction) else None, targets.pop(token, None)))

    factories, names, groups = stage_factories(cfg, tuple(calib.cameras) if with_cameras else ())
    t0 = time.perf_counter()
    with sinks:
        if workers == 0:
            summary: Summary = run_inprocess([f() for f in factories], remember(stream), sink=sink, total=total,
                                             sync=sync)
        else:
            import ray

            from perception.pipeline.ray_stream import run_stream

            started = not ray.is_initialized()
            if started:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            try:
                summary = run_stream(factories, remember(stream), sink=sink, total=total, names=names, groups=groups,
                                     num_cpus=min(1.0, (os.cpu_count() or 2) / (len(factories) + 1)))
                summary.sync = sync.stats.as_dict()
            finally:
                if started:
                    ray.shutdown()
        result = summary.to_dict()
    result["sinks"] = {k: {n: str(v) if isinstance(v, Path) else v for n, v in r.items()}
                       for k, r in sinks.close().items()}  # close() is idempotent: the with-block closed it
    if health is not None:
        result["extrinsic_health"] = health.summary()  # per camera: median CalibFormer correction, drifted or not
    result["mode"] = "in-process" if workers == 0 else "ray"
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
