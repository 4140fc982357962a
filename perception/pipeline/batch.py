"""Batch inference on Ray Data: a whole dataset through one model, in resumable, atomically written shards.

The frames ``0..n-1`` of a source are cut into shards of ``shard_size`` consecutive frames
(:func:`plan_shards`, names ``shard-00000``, ...). One Ray Data job covers the shards not finished yet:

    from_items(frame indices) ──map_batches(load_frames, tasks)──▶ frames (cloudpickled)
        ──map_batches(Predictor, ActorPoolStrategy(size=actors))──▶ one row per frame, its boxes as lists

The loader opens the reader inside the worker (once per worker process, cached), so nothing but
indices leaves the driver; each model actor builds :class:`ModelStage` once. The driver consumes the
stream and, as soon as every frame of a shard has come back, writes it (each file via a synced temp
file + ``os.replace``):

    OUT/shards/shard-00003.parquet          one row per box: frame_index, token, timestamp, model,
                                            class, score, x, y, z, dx, dy, dz, yaw (ego frame, LiDAR convention)
    OUT/shards/shard-00003.frames.parquet   one row per frame: frame_index, token, timestamp, boxes, error
                                            (frames with no box, or that failed, are not lost)
    OUT/manifest.json                       the run's parameters + every finished shard with its row and
                                            frame counts and errors; rewritten atomically after each shard

A shard counts as finished only once the manifest lists it (the commit point) and both files exist with
the listed row counts; ``resume=True`` skips those and redoes the rest. A frame that fails to load or
predict becomes a frame row with ``error`` set (and an entry in the manifest); the others go on.

Data specs (``--data``): a source name of :func:`perception.data.open_reader` with ``root``
(``kitti``, ``nuscenes``, ..., ``sim`` for a dataset written by ``tools/create_data.py sim``), or
synthetic frames rendered on the fly, no root: ``sim`` or ``sim:seeds=0-3,frames=50,lidar=hdl64,cameras=0``
(``seeds``: ``A-B`` inclusive, ``A+B+C`` or one seed; defaults as :class:`SimDataset`).
Frames reach the model in no particular order (rows are written sorted by frame index), so this
suits single-frame models; stateful stages (LiDAR sweep history, MSF) belong in the streaming runner.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from perception.engine.checkpoint import CheckpointError, atomic_write_text
from perception.engine.cli import ConfigError
from perception.structures import Sample

MANIFEST = "manifest.json"
FORMAT = "perception.batch_inference"
FORMAT_VERSION = 1
BOX_FIELDS = ("x", "y", "z", "dx", "dy", "dz", "yaw")
LOADER_MEMORY = 256 * 2**20  # bytes Ray reserves per loading task (a batch of decoded frames)


class BatchError(ConfigError):
    """A batch job that cannot run as asked (non-empty output without resume, a resume that does not match)."""


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Frames ``start..stop-1``; ``name`` (``shard-00003``) names its files."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    def __len__(self) -> int:
        return self.stop - self.start

    def files(self) -> dict[str, str]:
        """Paths relative to the output folder: ``boxes`` and ``frames`` parquet files."""
        return {"boxes": f"shards/{self.name}.parquet", "frames": f"shards/{self.name}.frames.parquet"}


def plan_shards(n_frames: int, shard_size: int) -> list[Shard]:
    """``ceil(n_frames / shard_size)`` shards of consecutive frames; the last may be shorter."""
    if n_frames < 0 or shard_size < 1:
        raise ValueError(f"plan_shards: need n_frames >= 0 and shard_size >= 1, got {n_frames}, {shard_size}")
    return [Shard(i, s, min(s + shard_size, n_frames)) for i, s in enumerate(range(0, n_frames, shard_size))]


# ---------------------------------------------------------------------------------------------
# Data specs
# ---------------------------------------------------------------------------------------------

def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        if "-" in text[1:]:
            a, b = text.split("-", 1)
            seeds = tuple(range(int(a), int(b) + 1))
        else:
            seeds = tuple(int(s) for s in text.split("+"))
    except ValueError:
        raise ConfigError(f"--data sim: seeds={text!r}: use A-B (inclusive), A+B+C or one integer") from None
    if not seeds:
        raise ConfigError(f"--data sim: seeds={text!r} is empty")
    return seeds


@dataclass(frozen=True)
class DataSpec:
    """Where frames come from: ``source`` + ``root`` for a reader, or ``source="sim"`` with ``sim`` options."""

    source: str
    root: str | None = None
    sim: dict[str, Any] = field(default_factory=dict)  # SimDataset kwargs when rendered on the fly
    text: str = ""  # the spec as given, for the manifest

    @classmethod
    def parse(cls, text: str, root: str | Path | None = None) -> "DataSpec":
        """``kitti`` (+ root), ``sim`` (+ root: on disk; no root: rendered), ``sim:seeds=0-3,frames=50,...``."""
        from perception.data import SOURCES

        source, _, opts = text.partition(":")
        if source not in SOURCES:
            raise ConfigError(f"--data {text!r}: unknown source {source!r}; choose from {', '.join(SOURCES)}")
        if source != "sim" or (root is not None and not opts):
            if opts:
                raise ConfigError(f"--data {text!r}: options after ':' are for rendered sim frames only")
            if root is None:
                raise ConfigError(f"--data {source} needs --root (the dataset folder)")
            return cls(source, str(Path(root).resolve()), text=text)
        if root is not None:
            raise ConfigError(f"--data {text!r} renders frames on the fly; drop --root (or drop the options to read {root})")
        kwargs: dict[str, Any] = {}
        for item in filter(None, opts.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"--data {text!r}: {item!r} is not key=value")
            if key == "seeds":
                kwargs["seeds"] = _parse_seeds(value)
            elif key == "frames":
                kwargs["frames"] = int(value)
            elif key == "lidar":
                kwargs["lidar"] = value
            elif key == "cameras":
                kwargs["render_cameras"] = value.lower() in ("1", "true", "yes")
            else:
                raise ConfigError(f"--data {text!r}: unknown option {key!r} (seeds, frames, lidar, cameras)")
        return cls("sim", None, kwargs, text=text)

    def open(self) -> Sequence[Sample]:
        """The samples, indexable ``0..len-1`` (a reader, or a :class:`SimDataset` without cache)."""
        if self.root is None:
            from perception.data.dataset import SimDataset

            return SimDataset(cache=False, **self.sim)
        from perception.data import open_reader

        return open_reader(self.source, self.root)

    def describe(self) -> dict[str, Any]:
        return {"data": self.text or self.source, "root": self.root, "sim": {k: list(v) if isinstance(v, tuple) else v
                                                                            for k, v in self.sim.items()}}


# ---------------------------------------------------------------------------------------------
# The Ray Data stages (run in workers)
# ---------------------------------------------------------------------------------------------

_OPEN: dict[str, Sequence[Sample]] = {}  # per worker process: open each source once


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]


def load_frames(batch: Any, data: DataSpec) -> Any:
    """``{shard, index}`` rows → ``+ token, timestamp, frame (cloudpickled Frame), error``; a failed load keeps its row."""
    import pyarrow as pa
    from ray import cloudpickle

    key = repr(data)  # class and fields
    if key not in _OPEN:
        _OPEN[key] = data.open()
    samples = _OPEN[key]
    tokens, stamps, blobs, errors = [], [], [], []
    for i in batch.column("index").to_pylist():
        try:
            frame = samples[i].frame
            blobs.append(cloudpickle.dumps(frame, protocol=5))
            tokens.append(frame.token)
            stamps.append(float(frame.timestamp))
            errors.append(None)
        except Exception as e:  # noqa: BLE001 - recorded per frame, the rest go on
            tokens.append("")
            stamps.append(float("nan"))
            blobs.append(None)
            errors.append(f"load: {_error_text(e)}")
    return pa.table({
        "shard": batch.column("shard"), "index": batch.column("index"),
        "token": pa.array(tokens, pa.string()), "timestamp": pa.array(stamps, pa.float64()),
        "frame": pa.array(blobs, pa.large_binary()), "error": pa.array(errors, pa.string()),
    })


_BOX = "box"  # per-frame list of [x, y, z, dx, dy, dz, yaw]


class Predictor:
    """The actor-pool stage: ``ModelStage(config, checkpoint)`` built once, a batch of frames per call.

    A batch that fails is retried frame by frame, so only the frames that fail are marked with ``error``.
    """

    def __init__(self, config: str, checkpoint: str, device: str = "cpu", threads: int = 1) -> None:
        import torch

        from perception.pipeline.model_stage import ModelStage

        torch.set_num_threads(max(1, threads))
        self.stage = ModelStage(config, checkpoint, device=device)
        self.model = type(self.stage.model).__name__

    def _predict(self, frames: list) -> list[tuple[list, list, list] | str]:
        def unpack(pred) -> tuple[list, list, list]:
            boxes = pred.detections.boxes
            names = [boxes.class_names[c] if c >= 0 else "unknown" for c in boxes.labels.tolist()]
            return names, pred.detections.scores.tolist(), boxes.tensor[:, :7].tolist()

        try:
            return [unpack(p) for p in self.stage.predict(frames)]
        except Exception:  # noqa: BLE001 - isolate the failing frames
            out: list[tuple[list, list, list] | str] = []
            for f in frames:
                try:
                    out.append(unpack(self.stage.predict([f])[0]))
                except Exception as e:  # noqa: BLE001
                    out.append(f"predict: {_error_text(e)}")
            return out

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        from ray import cloudpickle

        errors = batch.column("error").to_pylist()
        blobs = batch.column("frame").to_pylist()
        ok = [i for i, e in enumerate(errors) if e is None]
        frames, results = [], {}
        for i in ok:
            try:
                frames.append((i, cloudpickle.loads(blobs[i])))
            except Exception as e:  # noqa: BLE001
                errors[i] = f"load: {_error_text(e)}"
        if frames:
            results = dict(zip([i for i, _ in frames], self._predict([f for _, f in frames])))
        names, scores, boxes = [], [], []
        for i in range(batch.num_rows):
            r = results.get(i)
            if isinstance(r, str):
                errors[i], r = r, None
            names.append(r[0] if r else [])
            scores.append(r[1] if r else [])
            boxes.append(r[2] if r else [])
        return pa.table({
            "shard": batch.column("shard"), "index": batch.column("index"), "token": batch.column("token"),
            "timestamp": batch.column("timestamp"), "model": pa.array([self.model] * batch.num_rows, pa.string()),
            "error": pa.array(errors, pa.string()), "class": pa.array(names, pa.list_(pa.string())),
            "score": pa.array(scores, pa.list_(pa.float32())),
            _BOX: pa.array(boxes, pa.list_(pa.list_(pa.float32(), 7))),
        })


# ---------------------------------------------------------------------------------------------
# Output folder, manifest, shard files (driver)
# ---------------------------------------------------------------------------------------------

def _write_parquet(table: Any, path: Path) -> None:
    """``table`` to ``path`` via a synced temporary file beside it and ``os.replace``."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shard_tables(frames: list[dict]) -> tuple[Any, Any, list[dict]]:
    """Per-frame rows (sorted by index) → (boxes table, frames table, errors)."""
    import pyarrow as pa

    frames = sorted(frames, key=lambda r: r["index"])
    cols: dict[str, list] = {k: [] for k in ("frame_index", "token", "timestamp", "model", "class", "score", *BOX_FIELDS)}
    for r in frames:
        for name, score, box in zip(r["class"], r["score"], r[_BOX]):
            cols["frame_index"].append(r["index"])
            cols["token"].append(r["token"])
            cols["timestamp"].append(r["timestamp"])
            cols["model"].append(r["model"])
            cols["class"].append(name)
            cols["score"].append(score)
            for k, v in zip(BOX_FIELDS, box):
                cols[k].append(v)
    f32 = pa.float32()
    boxes = pa.table({
        "frame_index": pa.array(cols["frame_index"], pa.int64()), "token": pa.array(cols["token"], pa.string()),
        "timestamp": pa.array(cols["timestamp"], pa.float64()), "model": pa.array(cols["model"], pa.string()),
        "class": pa.array(cols["class"], pa.string()), "score": pa.array(cols["score"], f32),
        **{k: pa.array(cols[k], f32) for k in BOX_FIELDS},
    })
    table = pa.table({
        "frame_index": pa.array([r["index"] for r in frames], pa.int64()),
        "token": pa.array([r["token"] for r in frames], pa.string()),
        "timestamp": pa.array([r["timestamp"] for r in frames], pa.float64()),
        "boxes": pa.array([len(r["score"]) for r in frames], pa.int32()),
        "error": pa.array([r["error"] for r in frames], pa.string()),
    })
    errors = [{"index": r["index"], "token": r["token"], "error": r["error"]} for r in frames if r["error"]]
    return boxes, table, errors


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - missing or broken: not finished
        return None


def finished_shards(out: Path, manifest: dict) -> dict[str, dict]:
    """The manifest's shards whose files exist with the listed row counts (the others must be redone)."""
    good = {}
    for name, entry in manifest.get("shards", {}).items():
        files = entry.get("files", {})
        if (_parquet_rows(out / files.get("boxes", "?")) == entry.get("rows")
                and _parquet_rows(out / files.get("frames", "?")) == entry.get("frames")):
            good[name] = entry
    return good


def _prepare_output(out: Path, params: dict, resume: bool) -> dict:
    """The manifest to continue (resume) or a fresh one; refuses a non-empty ``out`` without ``resume``."""
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise BatchError(f"--out {out} is not empty; pass --resume to continue that run, or choose another folder")
        if not path.is_file():
            raise BatchError(f"--resume: {out} has no {MANIFEST}; it is not a batch inference output folder")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BatchError(f"--resume: cannot read {path}: {e}") from None
        if manifest.get("format") != FORMAT:
            raise BatchError(f"--resume: {path} is not a batch inference manifest (format {manifest.get('format')!r})")
        diff = [k for k in params if manifest.get("params", {}).get(k) != params[k]]
        if diff:
            was = {k: manifest.get("params", {}).get(k) for k in diff}
            now = {k: params[k] for k in diff}
            raise BatchError(f"--resume: {out} was made with other settings: {was}, now {now}; use the same ones or another --out")
        return manifest
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "params": params, "shards": {}, "runs": [],
            "complete": False}


def _save_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------

@dataclass
class InferResult:
    """What one call did: shards ``written`` now, ``skipped`` as already finished, totals over written shards."""

    out: Path
    shards: int
    written: list[str]
    skipped: list[str]
    frames: int = 0
    rows: int = 0
    failed: int = 0
    seconds: float = 0.0
    complete: bool = False

    def summary(self) -> str:
        return (f"{len(self.written)} shards written ({self.frames} frames, {self.rows} boxes, {self.failed} failed), "
                f"{len(self.skipped)} skipped as finished, {self.shards} in all{'' if self.complete else ' (incomplete)'}"
                f", {self.seconds:.1f} s → {self.out}")


def _sizes(actors: int, log: Callable[[str], None]) -> tuple[int, float, float]:
    """(actors, CPUs per actor, CPUs per loader task) that fit the cluster and leave room to load frames."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    if total >= 2:
        fit, actor_cpus, loader_cpus = max(1, int(total) - 1), 1.0, 1.0
    else:
        fit, actor_cpus, loader_cpus = 1, total / 2, total / 2
    if actors > fit:
        log(f"infer: {actors} model actors do not fit {total:g} CPUs with room to load frames; using {fit}")
        actors = fit
    return max(1, actors), actor_cpus, loader_cpus


def run_inference(config: str | Path, checkpoint: str | Path, data: DataSpec, out: str | Path, *,
                  shard_size: int = 50, batch_size: int = 4, actors: int = 1, resume: bool = False,
                  limit: int | None = None, max_shards: int | None = None, device: str = "cpu",
                  address: str | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> InferResult:
    """Predict every frame of ``data`` with the model of ``config`` + ``checkpoint`` into sharded files in ``out``.

    ``limit``: only the first ``limit`` frames; ``max_shards``: write at most that many unfinished shards
    this call (a partial run that ``resume`` continues). Uses the running Ray, else starts one
    (``address``, or locally with ``os.cpu_count()`` CPUs). User errors raise :class:`ConfigError`
    subclasses, :class:`CheckpointError` or ``DataError`` before any work starts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    config, checkpoint = Path(config).resolve(), Path(checkpoint).resolve()
    if not config.is_file():
        raise ConfigError(f"config not found: {config}")
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    if shard_size < 1 or batch_size < 1 or actors < 1:
        raise ConfigError(f"shard size, batch size and actors must be >= 1, got {shard_size}, {batch_size}, {actors}")
    n = len(data.open())  # DataError here for a missing root
    if limit is not None:
        n = min(n, max(0, limit))
    params = {"config": str(config), "checkpoint": str(checkpoint), **data.describe(), "frames": n,
              "shard_size": shard_size}
    manifest = _prepare_output(out, params, resume)
    plan = plan_shards(n, shard_size)
    done = finished_shards(out, manifest)
    stale = sorted(set(manifest["shards"]) - set(done))
    for name in stale:
        log(f"infer: {name} is listed but its files are missing or do not match; redoing it")
        del manifest["shards"][name]
    for tmp in (out / "shards").glob(".*.tmp-*"):  # half-written files of an interrupted run
        tmp.unlink(missing_ok=True)
    todo = [s for s in plan if s.name not in done]
    if max_shards is not None:
        todo = todo[:max(0, max_shards)]
    result = InferResult(out, len(plan), [], sorted(done))
    out.mkdir(parents=True, exist_ok=True)
    run_log: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "skipped": len(done), "written": []}
    manifest["runs"].append(run_log)
    _save_manifest(out, manifest)
    if todo:
        from perception.pipeline.model_stage import ModelStage

        ModelStage(config, checkpoint)  # a checkpoint that does not fit fails here, once, with a clear message
        _run_job(config, checkpoint, data, out, todo, manifest, run_log, result, batch_size=batch_size,
                 actors=actors, device=device, address=address, progress=progress, log=log)
    result.complete = manifest["complete"] = len(finished_shards(out, manifest)) == len(plan)
    _save_manifest(out, manifest)
    result.seconds = time.perf_counter() - t0
    return result


def _run_job(config: Path, checkpoint: Path, data: DataSpec, out: Path, todo: list[Shard], manifest: dict,
             run_log: dict, result: InferResult, *, batch_size: int, actors: int, device: str,
             address: str | None, progress: bool, log: Callable[[str], None]) -> None:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    actors, actor_cpus, loader_cpus = _sizes(actors, log)

    rows = [{"shard": s.index, "index": i} for s in todo for i in range(s.start, s.stop)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    # Loading runs as its own tasks beside the model actors (pipelined): its memory request makes its remote
    # args differ from the actors', which keeps Ray Data from fusing both into the actor.
    ds = ds.map_batches(load_frames, fn_kwargs={"data": data}, batch_size=batch_size, batch_format="pyarrow",
                        num_cpus=loader_cpus, memory=LOADER_MEMORY)
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"config": str(config), "checkpoint": str(checkpoint),
                                                          "device": device, "threads": int(actor_cpus)},
                        batch_size=batch_size, batch_format="pyarrow", num_cpus=actor_cpus,
                        compute=ray.data.ActorPoolStrategy(size=actors))

    by_index = {s.index: s for s in todo}
    pending: dict[int, dict[int, dict]] = {s.index: {} for s in todo}
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in table.to_pylist():
            got = pending.get(row["shard"])
            if got is None or row["index"] in got:  # a retried task's duplicate: keep the first
                continue
            got[row["index"]] = row
            shard = by_index[row["shard"]]
            if len(got) == len(shard):
                _finish_shard(out, shard, list(pending.pop(shard.index).values()), manifest, run_log, result, log)
    if pending:  # every frame row comes back, failed or not; anything else is a bug, not a user error
        raise RuntimeError(f"batch inference: shards {sorted(pending)} did not get all their frames back")


def _finish_shard(out: Path, shard: Shard, frames: list[dict], manifest: dict, run_log: dict,
                  result: InferResult, log: Callable[[str], None]) -> None:
    boxes, table, errors = _shard_tables(frames)
    files = shard.files()
    _write_parquet(table, out / files["frames"])
    _write_parquet(boxes, out / files["boxes"])
    manifest["shards"][shard.name] = {"start": shard.start, "stop": shard.stop, "frames": table.num_rows,
                                      "rows": boxes.num_rows, "failed": len(errors), "errors": errors, "files": files}
    manifest["shards"] = dict(sorted(manifest["shards"].items()))
    run_log["written"].append(shard.name)
    _save_manifest(out, manifest)  # the commit point: from here on the shard is finished
    result.written.append(shard.name)
    result.frames += table.num_rows
    result.rows += boxes.num_rows
    result.failed += len(errors)
    log(f"infer: {shard.name} frames {shard.start}-{shard.stop - 1}: {boxes.num_rows} boxes"
        + (f", {len(errors)} failed" if errors else ""))
