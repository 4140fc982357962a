"""The in-process runner (``--workers 0``): the stages in order, one frame at a time, no Ray.

Each stage is a callable ``item -> item`` (see :mod:`perception.pipeline.stages`). A stage that
raises on a frame records a :class:`~perception.pipeline.stats.FrameError` naming the frame's token;
that frame leaves the chain and every other frame goes on, in input order. Pulling from the source
is timed as the stage ``"source"`` (where a :class:`~perception.pipeline.sync.Synchronizer` does its
work); an error raised by the source ends the run (a generator cannot resume) and is recorded.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from perception.pipeline.stats import FrameError, StageStats
from perception.pipeline.sync import SensorMessage, Synchronizer, sample_messages
from perception.structures import Sample

Stage = Callable[[Any], Any]


@dataclass
class Summary:
    """What a run did: frames in/out/failed, per-stage stats, every error with its frame token."""

    frames_in: int = 0
    frames_out: int = 0
    frames_failed: int = 0
    wall_s: float = 0.0
    stages: list[StageStats] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    sync: dict | None = None  # SyncStats.as_dict() when a synchronizer fed the run

    @property
    def fps(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out, "frames_failed": self.frames_failed,
            "wall_s": self.wall_s, "fps": self.fps,
            "stages": [s.summary() for s in self.stages],
            "errors": [vars(e) for e in self.errors],
            "sync": self.sync,
        }

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


END = object()  # what :func:`pull` returns when the source is done


def pull(it, summary: Summary) -> Any:
    """The source's next item, timed as stage ``summary.stages[0]`` and counted; :data:`END` when done.

    An error raised by the source is recorded and ends the stream (a generator cannot resume).
    """
    t0 = time.perf_counter()
    try:
        item = next(it)
    except StopIteration:
        return END
    except Exception as e:  # noqa: BLE001 - recorded; the source cannot go on
        summary.errors.append(summary.stages[0].fail("source", e, time.perf_counter() - t0))
        return END
    summary.stages[0].record(time.perf_counter() - t0)
    summary.frames_in += 1
    return item


def stage_name(stage: Stage) -> str:
    """A stage's ``name`` attribute, else its function or class name."""
    return getattr(stage, "name", None) or getattr(stage, "__name__", None) or type(stage).__name__


def _token(item: Any) -> str:
    tok = getattr(item, "token", None)
    if tok is None and hasattr(item, "frame"):
        tok = getattr(item.frame, "token", None)
    return str(tok) if tok is not None else "?"


def run_inprocess(stages: Sequence[Stage], source: Iterable[Any], sink: Callable[[Any], None] | None = None,
                  progress: bool = True, sync: Synchronizer | None = None, total: int | None = None) -> Summary:
    """Run ``source``'s items through ``stages`` in order; call ``sink(item)`` on each that makes it through.

    ``sync``: the synchronizer feeding ``source`` (its counts go into ``Summary.sync``). ``total``: the
    expected frame count, for the progress bar.
    """
    from tqdm import tqdm

    stats = [StageStats(n) for n in _unique_names(stages)]
    summary = Summary(stages=[StageStats("source"), *stats])
    it = iter(source)
    t_start = time.perf_counter()
    with tqdm(total=total, disable=not progress, unit="frame", desc="pipeline") as bar:
        while (item := pull(it, summary)) is not END:
            token = _token(item)
            for stage, st in zip(stages, stats):
                t0 = time.perf_counter()
                try:
                    item = stage(item)
                except Exception as e:  # noqa: BLE001 - one bad frame must not stop the stream
                    summary.errors.append(st.fail(token, e, time.perf_counter() - t0))
                    summary.frames_failed += 1
                    break
                st.record(time.perf_counter() - t0)
            else:
                summary.frames_out += 1
                if sink is not None:
                    sink(item)
            bar.update(1)
    summary.wall_s = time.perf_counter() - t_start
    if sync is not None:
        summary.sync = sync.stats.as_dict()
    return summary


def _unique_names(stages: Sequence[Stage]) -> list[str]:
    names: list[str] = []
    for s in stages:
        n = stage_name(s)
        names.append(n if n not in names and n != "source" else f"{n}#{len(names)}")
    return names


def synchronized_frames(samples: Iterable[Sample], calib, reference: str, tolerance: float = 0.05,
                        window: float = 0.1, with_cameras: bool = True) -> tuple[Synchronizer, Iterable]:
    """``(synchronizer, frames)``: samples (a ``SimSequence``, a reader) → sensor messages → synchronized frames."""
    sync = Synchronizer(calib, reference, tolerance, window, None if with_cameras else ())
    return sync, sync.frames(sample_messages(samples, with_cameras))


__all__ = ["Summary", "run_inprocess", "synchronized_frames", "SensorMessage", "Synchronizer", "sample_messages"]
