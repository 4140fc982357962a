"""Camera models to and from plain dicts (JSON-ready), for calibration files we write and read.

``camera_to_dict(model)`` gives ``{"model": <class name>, **<dataclass fields>}`` (``width``/``height``
as ints, every other parameter as a float); ``camera_from_dict`` inverts it exactly (floats survive a
JSON round trip bit for bit). The four models are mapped directly in :data:`CAMERA_MODELS`, so
nothing depends on which modules happen to have been imported (no registry filled by side effects).
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Mapping

from perception.geometry.camera_base import CameraModel
from perception.geometry.cameras import KannalaBrandtCamera, MEICamera, PinholeCamera, RadialPolyFisheye

CAMERA_MODELS: dict[str, type[CameraModel]] = {
    "PinholeCamera": PinholeCamera,
    "MEICamera": MEICamera,
    "KannalaBrandtCamera": KannalaBrandtCamera,
    "RadialPolyFisheye": RadialPolyFisheye,
}


def camera_to_dict(model: CameraModel) -> dict[str, Any]:
    """``model`` → ``{"model": "PinholeCamera", "width": 640, "height": 360, "fx": ..., ...}``."""
    name = type(model).__name__
    if CAMERA_MODELS.get(name) is not type(model):
        raise ValueError(f"camera_to_dict: unsupported camera model {name!r}; supported: {tuple(CAMERA_MODELS)}")
    out: dict[str, Any] = {"model": name}
    for f in fields(model):
        v = getattr(model, f.name)
        out[f.name] = int(v) if f.name in ("width", "height") else float(v)
    return out


def camera_from_dict(d: Mapping[str, Any]) -> CameraModel:
    """The inverse of :func:`camera_to_dict`; raises ``ValueError`` naming an unknown model or parameter."""
    if not isinstance(d, Mapping):
        raise ValueError(f"camera_from_dict: expected a mapping, got {type(d).__name__}")
    params = dict(d)
    name = params.pop("model", None)
    cls = CAMERA_MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"camera_from_dict: unknown camera model {name!r}; known models: {tuple(CAMERA_MODELS)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"camera_from_dict: {name} has no parameter(s) {unknown}; its parameters are {sorted(names)}")
    required = [f.name for f in fields(cls)
                if f.name not in params and f.default is MISSING and f.default_factory is MISSING]
    if required:
        raise ValueError(f"camera_from_dict: {name} is missing parameter(s) {required}")
    return cls(**params)


__all__ = ["CAMERA_MODELS", "camera_from_dict", "camera_to_dict"]
