"""axpy_run (LLVM vector code in a numba kernel) against the same recurrence in numpy."""
import numba
import numpy as np
import pytest

from perception.ops._simd import axpy_run


@numba.njit
def _run16(acc, abase, astride, feats, fbase, n, w0, r, q, alpha):
    axpy_run(acc, abase, astride, feats, fbase, n, w0, r, q, alpha, 16)


@numba.njit
def _run64(acc, abase, astride, feats, fbase, n, w0, r, q, alpha):
    axpy_run(acc, abase, astride, feats, fbase, n, w0, r, q, alpha, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width,fn", [(16, _run16), (64, _run64)])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 9, 37])
def test_axpy_run_matches_recurrence(dtype, width, fn, n):
    rng = np.random.default_rng(n)
    C = width + 5                                  # a row wider than the block: the rest is left alone
    acc = rng.standard_normal(40 * C).astype(dtype)
    feats = rng.standard_normal(7 * C).astype(dtype)
    k, g, w0, r, q, alpha = 2, 3, 0.8, 1.3, 0.93, 0.7
    want = acc.copy().reshape(40, C)
    e, rj = w0, r
    for j in range(n):                             # the sequential recurrence of the docstring
        want[k + j, 1:1 + width] += dtype(alpha * e) * feats[g * C + 1:g * C + 1 + width]
        e, rj = e * rj, rj * q
    fn(acc, k * C + 1, C, feats, g * C + 1, n, w0, r, q, alpha)
    np.testing.assert_allclose(acc.reshape(40, C), want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    untouched = np.ones(40, bool)
    untouched[k:k + n] = False
    assert np.array_equal(acc.reshape(40, C)[untouched], want[untouched])
