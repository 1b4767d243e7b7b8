"""BLAS's triangular product (dtrmm) and solve (dtrsm) from the OpenBLAS inside numpy's own wheel: no scipy in the
function.

numpy exposes matrix products but neither TRMM, which multiplies by a triangular matrix in half GEMM's flops
(measured: 2x faster for 10,000 rows x m = 1000), nor TRSM, which solves with one in the same flops. numpy's wheels
ship OpenBLAS as `numpy.libs/libscipy_openblas64_*.so` with CBLAS entry points under a `scipy_` prefix and 64-bit
integers; where that library is absent (a numpy built against another BLAS), `lower_times` falls back to a plain
matrix product and `lower_solve` to numpy's general solver (LU: m^3 more flops, same answers to rounding).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

# CBLAS enums (cblas.h)
_COL_MAJOR, _LEFT, _UPPER, _LOWER, _NO_TRANS, _TRANS, _NON_UNIT = 102, 141, 121, 122, 111, 112, 131


def _find(name: str) -> Any:
    libraries = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libraries.glob("libscipy_openblas64_*.so")):
        try:
            function = getattr(ctypes.CDLL(str(path)), f"scipy_cblas_{name}64_")
        except (OSError, AttributeError):
            continue
        i64, pointer = ctypes.c_int64, ctypes.c_void_p
        function.argtypes = [ctypes.c_int] * 5 + [i64, i64, ctypes.c_double, pointer, i64, pointer, i64]
        function.restype = None
        return function
    return None


_dtrmm = _find("dtrmm")
_dtrsm = _find("dtrsm")
HAS_TRMM = _dtrmm is not None
HAS_TRSM = _dtrsm is not None


def _check(L: np.ndarray, B: np.ndarray) -> None:
    m = B.shape[0]
    if L.shape != (m, m) or L.dtype != np.float64 or B.dtype != np.float64:
        raise ValueError(f"expected float64 (m, m) and (m, n), got {L.shape} {L.dtype} and {B.shape} {B.dtype}")


def _call(function: Any, L: np.ndarray, B: np.ndarray, *, transposed: bool = False) -> np.ndarray:
    """op(L) B (or op(L)^-1 B) in place, op(L) = L^T if `transposed`, else L; L lower triangular."""
    m, n = B.shape
    if m == 0 or n == 0:
        return B
    # A C-ordered L is, to column-major BLAS, the upper triangular L^T: used transposed (no copy of a factor that
    # can be hundreds of MB).
    uplo, trans = (_LOWER, _NO_TRANS) if L.flags.f_contiguous else (_UPPER, _TRANS)
    if transposed:
        trans = _TRANS if trans == _NO_TRANS else _NO_TRANS
    function(_COL_MAJOR, _LEFT, uplo, trans, _NON_UNIT, m, n, 1.0, L.ctypes.data, m, B.ctypes.data, m)
    return B


def _blas_ready(L: np.ndarray, B: np.ndarray) -> bool:
    return B.flags.f_contiguous and B.flags.writeable and (L.flags.f_contiguous or L.flags.c_contiguous)


def lower_times(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L @ B, written over B where BLAS is at hand: L lower triangular (m, m), B Fortran-ordered float64 (m, n)."""
    _check(L, B)
    if _dtrmm is None or not _blas_ready(L, B):
        return L @ B
    return _call(_dtrmm, L, B)


def lower_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L^-1 B (forward substitution), written over B where BLAS is at hand: L lower triangular (m, m) with a
    non-zero diagonal, B Fortran-ordered float64 (m, n)."""
    _check(L, B)
    if _dtrsm is None or not _blas_ready(L, B):
        return np.linalg.solve(np.tril(L), B)
    return _call(_dtrsm, L, B)


def lower_transpose_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L^-T B (back substitution), written over B where BLAS is at hand; as `lower_solve`."""
    _check(L, B)
    if _dtrsm is None or not _blas_ready(L, B):
        return np.linalg.solve(np.tril(L).T, B)
    return _call(_dtrsm, L, B, transposed=True)
