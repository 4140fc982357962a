"""One reader per source, each a sequence of :class:`~perception.structures.Sample`."""
from __future__ import annotations

from pathlib import Path

from perception.data.common import DataError, Reader

SOURCES = ("kitti", "kitti360", "nuscenes", "waymo", "kitti-info", "navsim")


def open_reader(source: str, root: str | Path, **kwargs) -> Reader:
    """The reader for ``source`` over the dataset at ``root`` (layouts in the README, "Data sources")."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, f"{source} data root not found")
    if source == "kitti":
        from perception.data.kitti import KittiReader

        return KittiReader(root, **kwargs)
    if source == "kitti360":
        from perception.data.kitti360 import Kitti360Reader

        return Kitti360Reader(root, **kwargs)
    if source in ("nuscenes", "waymo", "kitti-info"):
        from perception.data.mmdet3d_infos import open_info_reader

        return open_info_reader(source, root, **kwargs)
    if source == "navsim":
        from perception.data.navsim import NavsimReader

        return NavsimReader.from_root(root, **kwargs)
    raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")


__all__ = ["DataError", "Reader", "SOURCES", "open_reader"]
