"""Scrambled Sobol' points in [0, 1)^d with numpy alone (the function ships without scipy).

The sequence is scipy.stats.qmc.Sobol's (Joe and Kuo's direction numbers, Gray-code order; tests compare the
unscrambled integers); the randomisation is the same kind, a random linear matrix scramble then a digital
shift (Owen 2003 / Matousek 1998), drawn from our own generator, so points are not scipy's for a given seed.
"""

from __future__ import annotations

import numpy as np

from handler.analyses.sobol_directions import DIRECTIONS

BITS = 30  # as scipy's default: up to 2^30 points; a point's resolution is 2^-30
MAX_DIMENSIONS = len(DIRECTIONS)


def direction_numbers(dimensions: int) -> np.ndarray:
    """V, (dimensions, BITS) unsigned: point i is the XOR of V[:, b] over the set bits b of gray(i)."""
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"Sobol' points have 1 to {MAX_DIMENSIONS} dimensions here, not {dimensions}")
    v = np.zeros((dimensions, BITS), dtype=np.uint64)
    v[0, :] = 1
    for d in range(1, dimensions):
        polynomial, *initial = DIRECTIONS[d]
        degree = polynomial.bit_length() - 1
        v[d, :degree] = initial[:degree]
        for j in range(degree, BITS):
            # m_j = 2 a_1 m_{j-1} ^ 4 a_2 m_{j-2} ^ ... ^ 2^s m_{j-s} ^ m_{j-s}
            value = int(v[d, j - degree])
            for k in range(degree):
                if (polynomial >> (degree - 1 - k)) & 1:
                    value ^= int(v[d, j - k - 1]) << (k + 1)
            v[d, j] = value
    # m_j / 2^j as BITS-bit integers: column j's leading bit is bit BITS - 1 - j
    return v << np.arange(BITS - 1, -1, -1, dtype=np.uint64)


def sobol_integers(n: int, directions: np.ndarray) -> np.ndarray:
    """The first n points as BITS-bit integers, (n, dimensions): point 0 is 0."""
    index = np.arange(n, dtype=np.uint64)
    gray = index ^ (index >> np.uint64(1))
    points = np.zeros((n, directions.shape[0]), dtype=np.uint64)
    for b in range(max(1, int(n - 1).bit_length())):
        has_bit = ((gray >> np.uint64(b)) & np.uint64(1)).astype(bool)
        points[has_bit] ^= directions[:, b]
    return points


def scrambled(directions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Direction numbers under a random lower-triangular binary matrix per dimension, and a random shift.

    Digit k of a scrambled point depends only on digits 1..k of the original, so the points keep the sequence's
    stratification (its net property) while each becomes uniform on [0, 1).
    """
    dimensions = directions.shape[0]
    lower = np.tril(rng.integers(0, 2, size=(dimensions, BITS, BITS), dtype=np.uint64), k=-1)
    lower[:, np.arange(BITS), np.arange(BITS)] = 1
    weights = np.uint64(1) << np.arange(BITS - 1, -1, -1, dtype=np.uint64)  # digit k (most significant first)
    row_masks = (lower * weights).sum(axis=2, dtype=np.uint64)  # (dimensions, BITS): digits feeding output digit k
    # output digit k of column j = parity(row_mask_k & v_j)
    parity = np.bitwise_count(row_masks[:, :, None] & directions[:, None, :]) & np.uint8(1)
    mixed = (parity.astype(np.uint64) * weights[None, :, None]).sum(axis=1, dtype=np.uint64)
    shift = (rng.integers(0, 2, size=(dimensions, BITS), dtype=np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return mixed, shift


def sobol_points(n: int, dimensions: int, rng: np.random.Generator) -> np.ndarray:
    """n scrambled Sobol' points in (0, 1)^dimensions: the centres of their 2^-BITS cells, never 0 or 1."""
    if not 1 <= n <= 2**BITS:
        raise ValueError(f"n must be from 1 to 2^{BITS}")
    mixed, shift = scrambled(direction_numbers(dimensions), rng)
    integers = sobol_integers(n, mixed)
    integers ^= shift
    return (integers.astype(float) + 0.5) * 2.0**-BITS
