"""Write geometry once for numpy arrays and torch tensors.

Geometry functions take either; the result has the input's type, dtype and device. torch is
imported lazily so numpy-only users (preprocessing actors) do not pay for it.
"""
from __future__ import annotations

import sys
from typing import Any, Union

import numpy as np

Array = Union[np.ndarray, Any]  # numpy array or torch.Tensor


def is_torch(a: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


class _Numpy:
    """The handful of array functions geometry needs, numpy flavour."""

    sqrt = staticmethod(np.sqrt)
    atan2 = staticmethod(np.arctan2)
    atan = staticmethod(np.arctan)
    cos = staticmethod(np.cos)
    sin = staticmethod(np.sin)
    tan = staticmethod(np.tan)
    abs = staticmethod(np.abs)
    where = staticmethod(np.where)
    isfinite = staticmethod(np.isfinite)
    zeros_like = staticmethod(np.zeros_like)
    ones_like = staticmethod(np.ones_like)
    full_like = staticmethod(np.full_like)

    @staticmethod
    def stack(xs, axis: int = -1):
        return np.stack(xs, axis=axis)

    @staticmethod
    def clip(x, lo=None, hi=None):
        return np.clip(x, lo, hi)

    @staticmethod
    def maximum(a, b):
        return np.maximum(a, b)

    @staticmethod
    def logical_and(a, b):
        return np.logical_and(a, b)

    @staticmethod
    def norm(x, axis: int = -1, keepdims: bool = False):
        return np.linalg.norm(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def minimum(a, b):
        return np.minimum(a, b)

    @staticmethod
    def logical_or(a, b):
        return np.logical_or(a, b)

    @staticmethod
    def logical_not(a):
        return np.logical_not(a)

    @staticmethod
    def all(x, axis: int = -1):
        return np.all(x, axis=axis)

    @staticmethod
    def max_abs(x) -> float:
        """``max(|x|)`` over all elements as a Python float (0.0 when empty, nan if any is nan)."""
        return float(np.abs(x).max()) if np.size(x) else 0.0

    @staticmethod
    def as_float(a):
        """``a`` as a floating array: float arrays unchanged, anything else as float64."""
        a = np.asarray(a)
        return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)

    @staticmethod
    def eps(a) -> float:
        """Machine epsilon of ``a``'s dtype."""
        return float(np.finfo(a.dtype).eps)


class _Torch:
    """The same functions, torch flavour."""

    def __init__(self) -> None:
        import torch

        self.t = torch
        self.sqrt = torch.sqrt
        self.atan2 = torch.atan2
        self.atan = torch.atan
        self.cos = torch.cos
        self.sin = torch.sin
        self.tan = torch.tan
        self.abs = torch.abs
        self.isfinite = torch.isfinite
        self.zeros_like = torch.zeros_like
        self.ones_like = torch.ones_like
        self.full_like = torch.full_like

    def where(self, cond, a, b):
        t = self.t
        ref = a if isinstance(a, t.Tensor) else b
        a = a if isinstance(a, t.Tensor) else t.as_tensor(a, dtype=ref.dtype, device=ref.device)
        b = b if isinstance(b, t.Tensor) else t.as_tensor(b, dtype=ref.dtype, device=ref.device)
        return t.where(cond, a, b)

    def stack(self, xs, axis: int = -1):
        return self.t.stack(list(xs), dim=axis)

    def clip(self, x, lo=None, hi=None):
        return self.t.clamp(x, lo, hi)

    def maximum(self, a, b):
        t = self.t
        if not isinstance(b, t.Tensor):
            return t.clamp(a, min=b)
        return t.maximum(a, b)

    def logical_and(self, a, b):
        return self.t.logical_and(a, b)

    def norm(self, x, axis: int = -1, keepdims: bool = False):
        return self.t.linalg.norm(x, dim=axis, keepdim=keepdims)

    def minimum(self, a, b):
        t = self.t
        if not isinstance(b, t.Tensor):
            return t.clamp(a, max=b)
        return t.minimum(a, b)

    def logical_or(self, a, b):
        return self.t.logical_or(a, b)

    def logical_not(self, a):
        return self.t.logical_not(a)

    def all(self, x, axis: int = -1):
        return x.all(dim=axis)

    def max_abs(self, x) -> float:
        """``max(|x|)`` over all elements as a Python float (0.0 when empty, nan if any is nan)."""
        return float(x.detach().abs().max()) if x.numel() else 0.0

    def as_float(self, a):
        """``a`` as a floating tensor: float tensors unchanged, anything else as float64."""
        return a if a.is_floating_point() else a.to(self.t.float64)

    def eps(self, a) -> float:
        """Machine epsilon of ``a``'s dtype."""
        return float(self.t.finfo(a.dtype).eps)


_NUMPY = _Numpy()
_TORCH: _Torch | None = None


def xp(a: Any):
    """The namespace (numpy-like or torch-like) matching ``a``."""
    global _TORCH
    if is_torch(a):
        if _TORCH is None:
            _TORCH = _Torch()
        return _TORCH
    return _NUMPY
