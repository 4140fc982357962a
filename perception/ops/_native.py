"""Build-on-first-use of the CUDA kernels in ``ops/<op>/`` (repository root).

The kernels are plain CUDA C (``*.cu``, no torch headers, so CI can compile-check them with
``nvcc -c`` on a machine without a GPU) plus a small C++ binding (``*_binding.cpp``) that
``torch.utils.cpp_extension.load`` compiles together with them the first time a CUDA tensor reaches
the op. A missing toolchain or a failed build raises at that first use with what to do; nothing
falls back silently.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

OPS_DIR = Path(__file__).resolve().parents[2] / "ops"


class NativeBuildError(RuntimeError):
    pass


@lru_cache(maxsize=None)
def load(op: str):
    """The compiled extension module for ``ops/<op>/`` (built once per machine, cached by torch)."""
    import torch

    if not torch.cuda.is_available():
        raise NativeBuildError(f"perception op {op!r}: CUDA backend requested but torch sees no CUDA device")
    folder = OPS_DIR / op
    sources = sorted(str(p) for p in folder.glob("*.cu")) + sorted(str(p) for p in folder.glob("*.cpp"))
    if not sources:
        raise NativeBuildError(f"perception op {op!r}: no kernel sources in {folder}")
    from torch.utils.cpp_extension import load as build

    try:
        return build(name=f"perception_{op}", sources=sources, extra_cuda_cflags=["-O3", "--use_fast_math"],
                     extra_cflags=["-O3"], verbose=False)
    except Exception as e:  # the compiler's message is in e
        raise NativeBuildError(
            f"perception op {op!r}: building the CUDA kernels in {folder} failed ({type(e).__name__}: {e}). "
            "Check `nvcc --version` matches torch.version.cuda, or use backend='cpu'/'torch'."
        ) from e
