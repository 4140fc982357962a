"""One reader per source, each a sequence of :class:`~perception.structures.Sample`."""
from __future__ import annotations

from pathlib import Path

from perception.data.common import DataError, Reader

SOURCES = ("kitti", "kitti360", "nuscenes", "waymo", "kitti-info", "navsim", "sim", "rosbag")


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
        from perception.data.mmdet3d_infos import Mmdet3dInfoReader

        return Mmdet3dInfoReader(_find_info_pkl(root), root, "kitti" if source == "kitti-info" else source, **kwargs)
    if source == "navsim":
        from perception.data.navsim import NavsimReader

        logs = sorted(p for p in (root / "navsim_logs").glob("*") if p.is_dir())
        if not logs:
            raise DataError(root / "navsim_logs", "no NAVSIM split folder (navsim_logs/<split>/*.pkl)")
        split = kwargs.pop("split", logs[0].name)
        return NavsimReader(root / "navsim_logs" / split, root / "sensor_blobs" / split, **kwargs)
    if source == "sim":
        from perception.data.sim import SimReader

        return SimReader(root, **kwargs)  # root: the dataset folder (dataset.json); split="train" by default
    if source == "rosbag":
        from perception.data.rosbag import RosbagReader

        return RosbagReader(root, **kwargs)  # root: a .bag, .db3, .mcap or rosbag2 folder; config=RosbagConfig
    raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")


__all__ = ["DataError", "Reader", "SOURCES", "open_reader"]


def _find_info_pkl(root: Path) -> Path:
    """``root`` itself when it is a pkl; else the folder's training info pkl (``*infos_train.pkl``), or its only pkl."""
    if root.is_file():
        return root
    pkls = sorted(p for p in root.glob("*.pkl") if "dbinfos" not in p.name)
    train = [p for p in pkls if p.name.endswith("infos_train.pkl")]
    if train:
        return train[0]
    if len(pkls) == 1:
        return pkls[0]
    raise DataError(root, f"cannot tell which info pkl to read among {[p.name for p in pkls] or 'none'}; pass the pkl as --root")
