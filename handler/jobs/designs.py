"""Designs of experiments generated from a short spec: scrambled Sobol' and Halton sequences, Latin hypercubes, grids.

Any rows start:stop of a design are generated on their own, equal bit for bit to those rows of the whole design,
in time and memory of stop - start whatever start and n: each chunk of a job generates the points it predicts.
numpy alone (the worker's package has no scipy): Sobol' and Halton are scipy.stats.qmc's sequences, reproduced
and tested against scipy (handler.jobs.sequences).
"""

from __future__ import annotations

import math

import numpy as np

from handler.jobs.sequences import halton_rows, sobol_rows

# Rounds of the Feistel networks that permute the Latin hypercube's strata: even, so a network's halves end as they
# began, and more than the 4 that make a keyed Feistel network a pseudo-random permutation (Luby-Rackoff).
FEISTEL_ROUNDS = 6
# SeedSequence spawn keys separating the Latin hypercube's streams of a seed: its jitter, and each dimension's strata.
LHS_JITTER, LHS_STRATA = 0, 1
# The Philox counter moves by one per 4 64-bit outputs (numpy's philox.h: a block of 4 words per counter value),
# and Generator.random takes one output per double: `advance(k)` skips 4 * k doubles.
PHILOX_DOUBLES_PER_STEP = 4
# Strata of a Latin hypercube computed at once (rows x dimensions): a few arrays of this many words fit in a core's
# L2 cache, and are long enough that numpy's per-call cost is small.
LHS_BLOCK_WORDS = 1 << 15


def grid_levels(n: int, dimensions: int) -> int:
    """Levels per feature of the largest full grid of at most n points: the integer `dimensions`-th root of n.

    Integer Newton steps, exact for any n (a float root is off by far more than one for n beyond 2**53, and
    raises OverflowError beyond 1e308); a few dozen steps for any n a job may have.
    """
    if n < 1:
        return 0
    root = 1 << -(-n.bit_length() // dimensions)  # 2**ceil(bits / d) > the root: Newton descends from above
    while True:
        step = ((dimensions - 1) * root + n // root ** (dimensions - 1)) // dimensions
        if step >= root:
            return root
        root = step


def design_points(method: str, n: int, dimensions: int) -> int:
    """How many points a design of this spec has: n, except a grid (levels ** dimensions <= n)."""
    return grid_levels(n, dimensions) ** dimensions if method == "grid" else n


def generate(method: str, n: int, seed: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(points, features) float64 inside [lower, upper]; the same spec always gives the same points."""
    return generate_rows(method, n, seed, lower, upper, 0, design_points(method, n, len(lower)))


def generate_rows(
    method: str, n: int, seed: int, lower: np.ndarray, upper: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Rows start:stop, (stop - start, features) float64, of the design generate(method, n, seed, lower, upper)."""
    dimensions = len(lower)
    points = design_points(method, n, dimensions)
    if not 0 <= start <= stop <= points:
        raise ValueError(f"rows {start}:{stop} are not within the design's {points} points")
    if method == "grid":
        return _grid_rows(n, lower, upper, start, stop)
    unit = {"sobol": _sobol_rows, "halton": _halton_rows, "lhs": _lhs_rows}[method](n, seed, dimensions, start, stop)
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if not np.all(lower < upper):
        raise ValueError(f"each lower bound must be below its upper bound: {lower} and {upper}")
    return _scaled(unit, lower, upper)


def _scaled(unit: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """unit in [0, 1) to [lower, upper]: scipy.stats.qmc.scale's arithmetic (designs made before are unchanged),
    except where upper - lower overflows (bounds past +-9e307): there (1 - u) lower + u upper, finite and inside."""
    with np.errstate(over="ignore"):
        width = upper - lower
    points = unit * width + lower
    if not np.isfinite(width).all():
        wide = ~np.isfinite(width)
        points[:, wide] = (1 - unit[:, wide]) * lower[wide] + unit[:, wide] * upper[wide]
    return points


def _sobol_rows(n: int, seed: int, dimensions: int, start: int, stop: int) -> np.ndarray:
    """scipy's scrambled Sobol' sequence seeded as ever (handler.jobs.sequences: numpy alone, O(stop - start))."""
    return sobol_rows(dimensions, seed, start, stop)


def _halton_rows(n: int, seed: int, dimensions: int, start: int, stop: int) -> np.ndarray:
    """scipy's scrambled Halton sequence seeded as ever (handler.jobs.sequences: numpy alone, O(stop - start))."""
    return halton_rows(dimensions, seed, start, stop)


def _lhs_rows(n: int, seed: int, dimensions: int, start: int, stop: int) -> np.ndarray:
    """Row i, dimension j: (stratum_j(i) + u_ij) / n, with stratum_j a keyed permutation of range(n).

    No n-sized array: each stratum is computed from its row (a Feistel network keyed by seed and dimension, cycle
    walking back into range(n)), and each jitter u_ij is Philox output number i * d + j, reached by advancing its
    counter. So each of the n strata of each dimension holds exactly one of the n points, whichever rows are made.
    """
    philox = np.random.Philox(np.random.SeedSequence(seed, spawn_key=(LHS_JITTER,)))
    steps, skipped = divmod(start * dimensions, PHILOX_DOUBLES_PER_STEP)
    philox.advance(steps)
    generator = np.random.Generator(philox)
    generator.random(skipped)
    unit = generator.random((stop - start, dimensions))
    keys = np.column_stack(  # (rounds, dimensions): each dimension's network has its own round keys
        [
            np.random.SeedSequence(seed, spawn_key=(LHS_STRATA, dimension)).generate_state(FEISTEL_ROUNDS, np.uint64)
            for dimension in range(dimensions)
        ]
    )
    # A block at a time: the network's dozens of passes over a block stay in the CPU's cache.
    block_rows = max(1, LHS_BLOCK_WORDS // dimensions)
    for first in range(start, stop, block_rows):
        rows = np.arange(first, min(first + block_rows, stop), dtype=np.uint64)
        unit[first - start : first - start + len(rows)] += _strata(rows, n, keys).T
    unit /= n
    return unit


def _strata(rows: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """(dimensions, rows): each dimension's keyed pseudo-random permutation of range(n), at `rows` (each < n).

    A Feistel network permutes range(high * low), a near-square rectangle holding range(n) with fewer than
    sqrt(n) + 1 values to spare; cycle walking (following the network's cycle until it comes back into range(n))
    makes that a permutation of range(n), and few values walk: each further step with probability about 1 / sqrt(n).
    """
    high = math.isqrt(n - 1) + 1
    low = -(-n // high)
    # Dimensions by rows, so numpy's inner loops run along the rows (a key per dimension broadcast along its row).
    strata = _feistel(np.repeat(rows[None, :], keys.shape[1], axis=0), high, low, keys[:, :, None])
    flat = strata.reshape(-1)
    outside = np.flatnonzero(flat >= n)
    while outside.size:
        walked = _feistel(flat[outside], high, low, keys[:, outside // len(rows)])
        flat[outside] = walked
        outside = outside[walked >= n]
    return strata


def _feistel(values: np.ndarray, high_radix: int, low_radix: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of range(high_radix * low_radix), as FF1 format-preserving encryption builds one.

    values = high * low_radix + low; each round (high, low) -> (low, (high + F(low + key)) mod high_radix), F a 64-bit
    mix reduced to range(high_radix) by a multiply-shift (Lemire's; radices < 2**32), and the radices swap; an even
    number of rounds ends in the first layout. keys: one per round, each broadcast against values.
    """
    high, low = np.divmod(values, np.uint64(low_radix))
    mixed, scratch = np.empty_like(values), np.empty_like(values)
    for key in keys:  # in place: a round allocates nothing
        np.add(low, key, out=mixed)
        _mix(mixed, scratch)
        mixed >>= np.uint64(32)
        mixed *= np.uint64(high_radix)
        mixed >>= np.uint64(32)
        high += mixed  # < 2 * high_radix: take high_radix off where that leaves it >= 0 (else it wraps, larger)
        np.subtract(high, np.uint64(high_radix), out=scratch)
        np.minimum(high, scratch, out=high)
        high, low = low, high
        high_radix, low_radix = low_radix, high_radix
    high *= np.uint64(low_radix)
    high += low
    return high


def _mix(values: np.ndarray, scratch: np.ndarray) -> None:
    """splitmix64's finalizer (Stafford's mix 13), in place: every output bit depends on every input bit."""
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(values, np.uint64(shift), out=scratch)
        values ^= scratch
        values *= np.uint64(multiplier)  # wraps mod 2**64
    np.right_shift(values, np.uint64(31), out=scratch)
    values ^= scratch


def _grid_rows(n: int, lower: np.ndarray, upper: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows of np.meshgrid(*axes, indexing="ij") stacked, each axis np.linspace(low, high, levels): by index."""
    dimensions = len(lower)
    levels = grid_levels(n, dimensions)
    indices = np.unravel_index(np.arange(start, stop), (levels,) * dimensions)
    rows = np.empty((stop - start, dimensions))
    for dimension, (low, high) in enumerate(zip(lower, upper, strict=True)):
        rows[:, dimension] = _linspace_at(float(low), float(high), levels, indices[dimension])
    return rows


def _linspace_at(low: float, high: float, levels: int, index: np.ndarray) -> np.ndarray:
    """np.linspace(low, high, levels)[index] without the levels-long axis (a 1-feature grid's axis is n long).

    numpy's own arithmetic, step for step: index * step + low, the last level exactly high (index / div * delta
    where the step underflows to 0).
    """
    values = index.astype(float)
    div = levels - 1
    with np.errstate(over="ignore"):
        delta = np.subtract(np.float64(high), np.float64(low))
    if not np.isfinite(delta):  # linspace's step overflows (bounds past +-9e307): weigh the ends instead
        values /= max(div, 1)
        return (1 - values) * low + values * high
    if div > 0:
        step = delta / div
        if step == 0:
            values /= div
            values *= delta
        else:
            values *= step
    else:
        values *= delta
    values += low
    if div > 0:
        values[index == div] = high
    return values
