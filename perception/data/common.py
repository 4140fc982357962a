"""What every reader shares: errors that name the file and line, binary point loading, the reader base."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from perception.structures import Sample


class DataError(ValueError):
    """Bad or missing input data. The message names the file (and line, where there is one)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def require_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, f"{what} not found")
    return p


def read_points_bin(path: str | Path, num_fields: int, dtype=np.float32) -> np.ndarray:
    """A flat binary point file → ``[N, num_fields]``; a truncated file (size not a multiple) raises DataError."""
    p = require_file(path, "point cloud")
    item = np.dtype(dtype).itemsize * num_fields
    size = p.stat().st_size
    if size % item:
        raise DataError(
            p, f"truncated point file: {size} bytes is not a multiple of the point size {item} "
            f"({num_fields} x {np.dtype(dtype).name}); {size % item} trailing bytes"
        )
    return np.fromfile(p, dtype=dtype).reshape(-1, num_fields)


def parse_floats(path: str | Path, line_no: int, text: str, count: int | None = None) -> np.ndarray:
    """Whitespace-separated floats from one line; raises DataError naming ``path:line_no`` when malformed."""
    try:
        values = np.array([float(x) for x in text.split()], dtype=np.float64)
    except ValueError as e:
        raise DataError(path, f"malformed number ({e}) in {text.strip()!r}", line_no) from None
    if count is not None and values.size != count:
        raise DataError(path, f"expected {count} numbers, got {values.size}", line_no)
    if not np.isfinite(values).all():
        raise DataError(path, "non-finite number", line_no)
    return values


def read_key_values(path: str | Path, sep: str = ":") -> dict[str, tuple[int, str]]:
    """``KEY: values`` lines (KITTI / KITTI-360 calibration) → ``{key: (line number, values text)}``."""
    p = require_file(path, "calibration")
    out: dict[str, tuple[int, str]] = {}
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if sep not in line:
            raise DataError(p, f"malformed line (no {sep!r}): {line.strip()!r}", i)
        key, value = line.split(sep, 1)
        out[key.strip()] = (i, value)
    return out


def load_image(path: str | Path) -> np.ndarray:
    """An image file → ``[H, W, 3]`` uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    p = require_file(path, "image")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(p, f"cannot decode image: {e}") from None


class Reader(ABC, Sequence[Sample]):
    """A dataset as a sequence of :class:`~perception.structures.Sample` (frame + targets), loaded lazily."""

    name: str = "reader"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Sample: ...

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} frames")
        return self.load(index % len(self))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.load(i)

    def frames(self):
        """Only the model inputs (what the car sees)."""
        for s in self:
            yield s.frame
