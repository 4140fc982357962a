"""The pipeline's stages, one import away: each a plain class with ``__call__(item) -> item``.

``item`` is a :class:`~perception.structures.Frame` (first stage) or a
:class:`~perception.pipeline.types.Preprocessed`; every stage returns a ``Preprocessed``. The same
objects run in process (:func:`perception.pipeline.runner.run_inprocess`) and, later, inside Ray
actors and ``map_batches``. Stages that keep state across frames (``LidarPreprocess``: pose and
sweep history) need their frames in time order, one stream per instance.
"""
from perception.pipeline.camera import CameraConfig, CameraPreprocess, scale_camera, undistort_pinhole
from perception.pipeline.lidar import LidarConfig, LidarPreprocess
from perception.pipeline.stats import FrameError, StageStats
from perception.pipeline.sync import EGO_POSE, SensorMessage, Synchronizer, SyncStats, sample_messages
from perception.pipeline.types import CameraTensors, LidarCounts, LidarTensors, Preprocessed, as_preprocessed

__all__ = [
    "CameraConfig", "CameraPreprocess", "CameraTensors", "EGO_POSE", "FrameError", "LidarConfig", "LidarCounts",
    "LidarPreprocess", "LidarTensors", "Preprocessed", "SensorMessage", "StageStats", "SyncStats", "Synchronizer",
    "as_preprocessed", "sample_messages", "scale_camera", "undistort_pinhole",
]
