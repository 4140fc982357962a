"""Backend choice shared by every op."""
from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "cpu", "cuda")


def resolve(backend: str, *tensors: torch.Tensor) -> str:
    """``"auto"`` → ``"cuda"`` when the inputs are on a CUDA device, else ``"cpu"``; validates the name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = any(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if backend == "auto":
        return "cuda" if on_cuda else "cpu"
    if backend == "cuda" and not on_cuda:
        raise ValueError("backend='cuda' needs CUDA tensors; move the inputs with .cuda() or use backend='cpu'")
    if backend == "cpu" and on_cuda:
        raise ValueError("backend='cpu' needs CPU tensors; use backend='cuda' (or 'torch') for CUDA tensors")
    return backend


def check_shape(name: str, t: torch.Tensor, ndim: int, last: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``t`` has ``ndim`` dims (and ``last`` as its last size)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        want = f"{ndim}-D" + (f" with last dim {last}" if last is not None else "")
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(t.shape)}")
