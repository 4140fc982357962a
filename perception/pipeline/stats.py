"""Per-stage timing and error bookkeeping, shared by the in-process runner (and later the Ray runners)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FrameError:
    """One stage failing on one frame: the frame's ``token``, the stage, the exception type and message."""

    stage: str
    token: str
    error: str
    type: str = ""


@dataclass
class StageStats:
    """Latencies (seconds, one per call) and errors of one stage.

    ``throughput_fps`` is calls per second of time spent *in* the stage (what the stage alone
    could sustain); the runner's ``Summary.fps`` is end to end.
    """

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        self.latencies.append(float(seconds))

    def fail(self, token: str, exc: BaseException, seconds: float) -> FrameError:
        self.latencies.append(float(seconds))
        err = FrameError(self.name, token, str(exc), type(exc).__name__)
        self.errors.append(err)
        return err

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, float | int | str]:
        lat = np.asarray(self.latencies) * 1e3
        total = float(lat.sum()) / 1e3
        return {
            "name": self.name,
            "calls": self.calls,
            "errors": len(self.errors),
            "latency_ms_mean": float(lat.mean()) if len(lat) else 0.0,
            "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else 0.0,
            "throughput_fps": self.calls / total if total > 0 else 0.0,
        }
