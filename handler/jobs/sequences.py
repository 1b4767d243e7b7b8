"""Rows start:stop of scipy.stats.qmc's scrambled Sobol' and Halton sequences, with numpy alone.

The job worker generates its chunk of a design without scipy (102 MB of its package) and without generating the
rows before its chunk: `sobol_rows(d, seed, start, stop)` equals, bit for bit,
`qmc.Sobol(d, scramble=True, rng=np.random.default_rng(seed)).random(stop)[start:stop]`, and `halton_rows`
likewise for `qmc.Halton` (scipy 1.18; tests/test_job_sequences.py compares them). Each draws its scrambling from
the same generator as scipy, in the same order, and computes each point with the same operations in the same order;
the cost grows with stop - start, not with start. Unlike scipy, no warning for point counts that are not powers of
two: a chunk's count says nothing about the design's.

Halton on arm64: scipy 1.18.1's aarch64 wheel compiles its digit loop `s += r * b` to a fused multiply-add (one
rounding, not two), so there its points differ from x86-64's, and from these, by one ulp in ~1% of coordinates.
numpy has no fused multiply-add; these rows are x86-64 scipy's on every architecture.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path

import numpy as np

# Joe and Kuo's direction numbers (new-joe-kuo-6.21201) as scipy ships them: scripts/export_sobol_directions.py
DIRECTIONS_FILE = Path(__file__).with_name("sobol_directions.npz")
SOBOL_BITS = 30  # scipy's default: points are multiples of 2^-30, at most 2^30 of them
MAX_SOBOL_POINTS = 2**SOBOL_BITS
SCRAMBLE_BLOCK = 1024  # dimensions scrambled at once: ~10 MB of temporaries


def engine_rng(seed: int) -> np.random.Generator:
    """The generator a scipy QMC engine draws from when given `np.random.default_rng(seed)`: a child spawned from
    the given one's seed sequence (scipy._lib._util._rng_spawn), so the first child of SeedSequence(seed)."""
    child = np.random.SeedSequence(seed).spawn(1)[0]
    return np.random.Generator(np.random.PCG64(child))


def checked_rows(start: int, stop: int) -> tuple[int, int]:
    start, stop = operator.index(start), operator.index(stop)
    if not 0 <= start <= stop:
        raise ValueError(f"rows must satisfy 0 <= start <= stop, got [{start}, {stop})")
    return start, stop


@functools.cache
def sobol_table() -> tuple[np.ndarray, np.ndarray]:
    """(poly, vinit): each dimension's primitive polynomial and initial direction numbers, as uint64."""
    with np.load(DIRECTIONS_FILE) as table:
        return table["poly"].astype(np.uint64), table["vinit"].astype(np.uint64)


def max_sobol_dimensions() -> int:
    return len(sobol_table()[0])


def sobol_directions(dimensions: int) -> np.ndarray:
    """scipy's _initialize_v: (dimensions, SOBOL_BITS) uint32, column j the direction numbers m_j / 2^(j+1) as
    SOBOL_BITS-bit integers. Bratley and Fox's recurrence, run over all dimensions at once."""
    poly_all, vinit_all = sobol_table()
    if not 1 <= dimensions <= len(poly_all):
        raise ValueError(f"Sobol' points have 1 to {len(poly_all)} dimensions, not {dimensions}")
    poly, vinit = poly_all[:dimensions], vinit_all[:dimensions]
    degree = np.array([int(p).bit_length() - 1 for p in poly])
    rows = np.arange(dimensions)
    v = np.zeros((dimensions, SOBOL_BITS), dtype=np.uint64)
    for j in range(SOBOL_BITS):
        initial = j < degree
        value = v[rows, np.maximum(j - degree, 0)]  # m_{j-s}
        for k in range(int(degree.max())):
            # ^ 2^(k+1) a_k m_{j-k-1} for the polynomial's coefficients a_k (its bit s-1-k)
            uses = (k < degree) & ~initial
            coefficient = (poly >> np.maximum(degree - 1 - k, 0).astype(np.uint64)) & np.uint64(1)
            term = v[:, max(j - k - 1, 0)] << np.uint64(k + 1)
            value ^= np.where(uses & (coefficient == 1), term, np.uint64(0))
        v[:, j] = np.where(initial, vinit[:, min(j, vinit.shape[1] - 1)], value)
    v[0, :] = 1  # the first dimension is van der Corput's, whatever its table row says
    v <<= np.arange(SOBOL_BITS - 1, -1, -1, dtype=np.uint64)
    return v.astype(np.uint32)


def sobol_scramble(directions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """scipy's Sobol._scramble and _cscramble: the digital shift, then the direction numbers under a random lower
    triangular binary matrix (LMS), drawn in that order as uint32 (the draws' dtype decides the stream)."""
    dimensions, bits = directions.shape
    shift_bits = rng.integers(0, 2, size=(dimensions, bits), dtype=np.uint32)
    shift = np.dot(shift_bits, 2 ** np.arange(bits, dtype=np.uint32))
    ltm = np.tril(rng.integers(0, 2, size=(dimensions, bits, bits), dtype=np.uint32))
    ltm[:, np.arange(bits), np.arange(bits)] = 1
    # row p of a matrix as an integer, its column 0 the most significant bit (_cscramble's cdot_pow2); integer
    # matmuls (exact: at most `bits` terms below 2^bits), by blocks of dimensions to bound the (block, p, j) arrays
    weights = np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64)
    scrambled = np.empty((dimensions, bits), dtype=np.uint64)
    for first in range(0, dimensions, SCRAMBLE_BLOCK):
        block = slice(first, first + SCRAMBLE_BLOCK)
        masks = ltm[block].astype(np.uint64) @ weights  # (block, p)
        # bit (bits - 1 - p) of scrambled number j: the parity of row p AND number j
        parity = np.bitwise_count(masks[:, :, None] & directions[block].astype(np.uint64)[:, None, :]) & np.uint8(1)
        scrambled[block] = weights @ parity.astype(np.uint64)
    return scrambled.astype(np.uint32), shift.astype(np.uint32)


def sobol_rows(dimensions: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of scipy's scrambled Sobol' sequence (30 bits) seeded with default_rng(seed): float64
    (stop - start, dimensions) in [0, 1).

    Point k is the shift XOR the direction numbers at the set bits of gray(k) = k ^ (k >> 1): what scipy's
    Gray-code walk (one XOR per step, from the shift at k = 0) holds after k steps.
    """
    start, stop = checked_rows(start, stop)
    if stop > MAX_SOBOL_POINTS:
        raise ValueError(f"at most 2**{SOBOL_BITS} = {MAX_SOBOL_POINTS} Sobol' points, not {stop}")
    directions, shift = sobol_scramble(sobol_directions(dimensions), engine_rng(seed))
    rows = stop - start
    points = np.empty((rows, dimensions), dtype=np.uint32)
    if rows:
        # gray(k)'s bits from `varying` up are the same for every k in [start, stop): folded in once
        varying = (start ^ (stop - 1)).bit_length()
        common = start ^ (start >> 1)
        points[:] = np.bitwise_xor.reduce(
            [shift] + [directions[:, b] for b in range(varying, SOBOL_BITS) if (common >> b) & 1], axis=0
        )
        index = np.arange(start, stop, dtype=np.uint64)
        gray = index ^ (index >> np.uint64(1))
        # the varying bits `width` at a time: a table of the XORs of every subset of those directions, one lookup
        # per row (width ~ log2(rows), so that the tables cost no more than the rows)
        width = max(1, min(8, rows.bit_length()))
        for low in range(0, varying, width):
            bits = range(low, min(low + width, varying))
            table = np.zeros((1, dimensions), dtype=np.uint32)
            for b in bits:
                table = np.concatenate([table, table ^ directions[:, b]])
            digit = (gray >> np.uint64(low)) & np.uint64(len(table) - 1)
            points ^= table[digit]
    return points * (1.0 / 2**SOBOL_BITS)  # as scipy: the uint32 as a double times 2^-30, exact


def first_primes(count: int) -> list[int]:
    """The first `count` primes (scipy's n_primes), by a sieve up to a bound the count-th prime is below."""
    limit = 16
    if count >= 6:  # Rosser: p_n < n (ln n + ln ln n) for n >= 6
        limit = int(count * (math.log(count) + math.log(math.log(count)))) + 1
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return [int(p) for p in np.flatnonzero(sieve)[:count]]


def halton_permutations(base: int, rng: np.random.Generator) -> np.ndarray:
    """scipy's _van_der_corput_permutations: one shuffled range(base) per digit a double resolves."""
    count = math.ceil(54 / math.log2(base)) - 1
    permutations = np.repeat(np.arange(base)[None], count, axis=0)
    for permutation in permutations:
        rng.shuffle(permutation)
    return permutations


def halton_rows(dimensions: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of scipy's scrambled Halton sequence seeded with default_rng(seed): float64
    (stop - start, dimensions) in [0, 1).

    Dimension i is the van der Corput sequence in the i-th prime base with each digit permuted (Owen 2017); the
    sum runs digit by digit, least significant first, as scipy's _cy_van_der_corput_scrambled adds them.
    """
    start, stop = checked_rows(start, stop)
    if dimensions < 1:
        raise ValueError(f"Halton points have at least 1 dimension, not {dimensions}")
    rng = engine_rng(seed)
    bases = first_primes(dimensions)
    permutations = [halton_permutations(base, rng) for base in bases]  # drawn for every base first, as scipy
    points = np.empty((stop - start, dimensions), dtype=np.float64)
    index = np.arange(start, stop, dtype=np.int64)
    for i, (base, digits) in enumerate(zip(bases, permutations, strict=True)):
        total = np.zeros(stop - start)
        quotient = index
        b2r = 1.0 / base
        largest = stop - 1
        for permutation in digits:
            if largest > 0:
                quotient, remainder = np.divmod(quotient, base)
                total += permutation[remainder] * b2r
                largest //= base
            else:  # every row's remaining digits are 0: the same term for all
                total += float(permutation[0]) * b2r
            b2r /= base
        points[:, i] = total
    return points
