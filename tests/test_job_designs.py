"""handler/jobs/designs.py: rows of a design generated alone, as a job's chunks generate them, are the design's rows.

Designs are integer and bit arithmetic on the way to their floats, so rows are compared exactly.
"""

from __future__ import annotations

import tracemalloc
import warnings
from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import qmc

from handler.jobs.designs import design_points, generate, generate_rows, grid_levels

METHODS = ("sobol", "halton", "grid", "lhs")
SEED = 20_241
LOWER = np.array([0.0, -1.5, 2.0, -1e6])
UPPER = np.array([1.0, 3.25, 2.0 + 1e-9, 7e6])


def chunkings(points: int) -> list[list[int]]:
    """Ways to cut rows 0:points in chunks (boundaries): aligned and ragged sizes, single rows, a last partial chunk."""
    ragged = np.cumsum(np.random.default_rng(points).integers(1, 98, size=points)).tolist()
    single = sorted({0, 1, 2, points // 3, points // 3 + 1, points - 1, points})
    return [
        [0, points],
        [*range(0, points, 256), points],  # a power of two (Sobol' balance), the last chunk partial unless it divides
        [*range(0, points, 300), points],
        [0, *(b for b in ragged if b < points), points],
        [b for b in single if 0 <= b <= points],  # one-row chunks at the start, in the middle and at the end
    ]


def in_chunks(method: str, n: int, seed: int, boundaries: list[int], lower=LOWER, upper=UPPER) -> np.ndarray:
    return np.concatenate(
        [generate_rows(method, n, seed, lower, upper, start, stop) for start, stop in pairwise(boundaries)]
    )


def scipy_design(engine: type, n: int, seed: int, lower=LOWER, upper=UPPER) -> np.ndarray:
    """The design as it was made before chunks generated their own rows: scipy's engine, in one piece."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*balance properties.*", category=UserWarning)
        unit = engine(len(lower), scramble=True, rng=np.random.default_rng(seed)).random(n)
    return qmc.scale(unit, lower, upper)


def meshgrid_design(n: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The grid as it was made before: np.meshgrid of np.linspace axes, stacked."""
    levels = grid_levels(n, len(lower))
    axes = [np.linspace(low, high, levels) for low, high in zip(lower, upper, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(lower))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 97, 1_000, 4_099])
def test_a_designs_chunks_together_are_the_design_made_in_one_piece(method: str, n: int):
    # Given a design and several ways of cutting it in chunks
    whole = generate(method, n, SEED, LOWER, UPPER)
    points = design_points(method, n, len(LOWER))
    assert whole.shape == (points, len(LOWER))
    for boundaries in chunkings(points):
        # When each chunk generates its own rows
        rows = in_chunks(method, n, SEED, boundaries)
        # Then together they are the design, bit for bit
        assert rows.dtype == np.float64
        assert np.array_equal(rows, whole), (method, n, boundaries)


@pytest.mark.parametrize("method", ["sobol", "halton", "lhs"])
def test_a_design_of_one_row_chunks_is_the_design(method: str):
    # Given a small design, When every row is generated alone, Then the rows are the design
    assert np.array_equal(in_chunks(method, 61, SEED, list(range(62))), generate(method, 61, SEED, LOWER, UPPER))


@pytest.mark.parametrize(("method", "engine"), [("sobol", qmc.Sobol), ("halton", qmc.Halton)])
@pytest.mark.parametrize("n", [1, 100, 1_024, 5_001])
def test_sobol_and_halton_designs_are_the_ones_made_before_for_the_same_seed(method: str, engine: type, n: int):
    # Given scipy's scrambled engine seeded as designs always were, drawn in one piece
    expected = scipy_design(engine, n, SEED)
    # When the design is generated, whole and in chunks
    # Then both are scipy's points exactly: a job rerun with a recorded seed gets the same design
    assert np.array_equal(generate(method, n, SEED, LOWER, UPPER), expected)
    assert np.array_equal(in_chunks(method, n, SEED, chunkings(n)[3]), expected)


@pytest.mark.parametrize(("method", "engine", "n"), [("sobol", qmc.Sobol, 2**20 + 3), ("halton", qmc.Halton, 300_007)])
def test_rows_far_into_a_long_sequence_are_scipys(method: str, engine: type, n: int):
    # Given a long design made in one piece by scipy (the jump to a row sets high bits of the Sobol' Gray code)
    expected = scipy_design(engine, n, SEED)
    for start, stop in [(n - 1_000, n), (n // 2 - 1, n // 2 + 7), (2**18 - 1, 2**18 + 1), (n - 1, n)]:
        # When rows deep into it are generated alone
        rows = generate_rows(method, n, SEED, LOWER, UPPER, start, stop)
        # Then they are scipy's rows
        assert np.array_equal(rows, expected[start:stop]), (start, stop)


def test_a_sobol_jump_lands_where_scipys_own_fast_forward_does():
    # Given scipy's public way to skip points (stepping through each)
    for start in (1, 2, 3, 255, 256, 257, 12_345):
        engine = qmc.Sobol(4, scramble=True, rng=np.random.default_rng(SEED)).fast_forward(start)
        # When rows from `start` are generated, Then they are the fast-forwarded engine's next points
        expected = qmc.scale(engine.random(9), LOWER, UPPER)
        assert np.array_equal(generate_rows("sobol", 20_000, SEED, LOWER, UPPER, start, start + 9), expected)


@pytest.mark.parametrize(
    ("n", "lower", "upper"),
    [
        (10**6, [-2.0], [3.0]),  # one feature: an axis of 10^6 levels
        (1_000, [0.1, -7.3], [0.7, 1e3]),
        (3, [0.0, 0.0], [1.0, 1.0]),  # one level per axis
        (4, [0.0, -1.0], [1.0, 1.0]),  # two levels
        (999, [0.0, 1 / 3, -1e-12], [5e-324, 2 / 3, 1e-12]),  # a step that underflows to 0 (numpy's special case)
        (625, LOWER, UPPER),
    ],
)
def test_a_grid_is_the_meshgrid_of_linspace_axes(n: int, lower: list[float], upper: list[float]):
    low, high = np.asarray(lower), np.asarray(upper)
    # Given the grid as np.meshgrid of np.linspace axes made it
    expected = meshgrid_design(n, low, high)
    points = len(expected)
    # When it is generated, whole and in chunks
    # Then every row is the meshgrid's, bit for bit
    assert np.array_equal(generate("grid", n, 0, low, high), expected)
    boundaries = sorted({0, 1, points // 7, points // 2, points // 2 + 1, points - 1, points})
    assert np.array_equal(in_chunks("grid", n, 0, boundaries, low, high), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 97, 1_000, 1_024, 65_537])
def test_a_latin_hypercube_has_one_point_in_each_stratum_of_each_dimension(n: int):
    # Given a Latin hypercube in the unit cube (scaling by [0, 1] is exact), generated in ragged chunks
    unit = in_chunks("lhs", n, SEED, chunkings(n)[3], np.zeros(5), np.ones(5))
    # When each value is put in its stratum [k / n, (k + 1) / n)
    strata = np.floor(unit * n).astype(np.int64)
    # Then each of the n strata of each dimension holds exactly one point
    for dimension in range(5):
        assert np.array_equal(np.sort(strata[:, dimension]), np.arange(n)), dimension


def test_a_latin_hypercubes_dimensions_are_permuted_independently():
    # Given a Latin hypercube of n points
    n = 20_000
    unit = generate("lhs", n, SEED, np.zeros(4), np.ones(4))
    # When the dimensions' strata are compared pairwise
    ranks = np.floor(unit * n)
    correlation = np.corrcoef(ranks, rowvar=False)
    # Then no two are related: the rank correlation of independent permutations has sd 1 / sqrt(n - 1)
    off_diagonal = correlation[~np.eye(4, dtype=bool)]
    assert np.all(np.abs(off_diagonal) < 5 / np.sqrt(n - 1)), correlation
    # And the jitter inside the strata is uniform: its mean is 1/2 within 5 sd (1 / sqrt(12 n))
    jitter = unit * n - ranks
    assert np.all(np.abs(jitter.mean(axis=0) - 0.5) < 5 / np.sqrt(12 * n)), jitter.mean(axis=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_point_lies_within_the_bounds(method: str):
    # Given bounds of different widths and signs, When a design is generated
    points = generate(method, 4_099, SEED, LOWER, UPPER)
    # Then every point lies inside them (a grid reaches both ends)
    assert np.all(points >= LOWER)
    assert np.all(points <= UPPER)
    if method == "grid":
        assert np.array_equal(points.min(axis=0), LOWER)
        assert np.array_equal(points.max(axis=0), UPPER)


@pytest.mark.parametrize("method", METHODS)
def test_bounds_wider_than_a_float_can_measure_still_give_finite_points_inside_them(method: str):
    # Given bounds whose width overflows float64 (upper - lower > 1.8e308) beside tiny and ordinary ones
    big = np.finfo(float).max
    lower, upper = np.array([-big, -1e308, 0.0, 0.0]), np.array([big, 1e308, 1e-300, 1.0])
    # When a design is generated, whole and in chunks
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way either
        points = generate(method, 4_099, SEED, lower, upper)
        chunked = in_chunks(method, 4_099, SEED, chunkings(len(points))[2], lower, upper)
    # Then every value is finite and inside its bounds, the chunks are the design, and the ordinary dimensions are
    # what they were
    assert np.isfinite(points).all()
    assert np.all(points >= lower)
    assert np.all(points <= upper)
    assert np.array_equal(chunked, points)
    ordinary = generate(method, 4_099, SEED, np.zeros(4), np.array([1.0, 1.0, *upper[2:]]))
    assert np.array_equal(points[:, 2:], ordinary[:, 2:])
    # spread over the bounds, not collapsed to a point or an end
    assert np.all(points[:, :2].min(axis=0) < lower[:2] / 2)
    assert np.all(points[:, :2].max(axis=0) > upper[:2] / 2)


@pytest.mark.parametrize("method", ["sobol", "halton", "lhs"])
def test_the_same_seed_gives_the_same_design_and_another_seed_another(method: str):
    # Given two designs of each of two seeds
    first, again = (generate(method, 500, SEED, LOWER, UPPER) for _ in range(2))
    other = generate(method, 500, SEED + 1, LOWER, UPPER)
    # Then the same seed gives the same points, another seed other points (in every dimension)
    assert np.array_equal(first, again)
    assert np.all(np.any(first != other, axis=0))


@pytest.mark.parametrize(("method", "dimensions"), [*((method, 4) for method in METHODS), ("grid", 1)])
def test_the_last_rows_of_a_ten_million_point_design_cost_the_memory_of_those_rows(method: str, dimensions: int):
    n = 10**7
    low, high = np.zeros(dimensions), np.ones(dimensions)
    points = design_points(method, n, dimensions)
    generate_rows(method, n, SEED, low, high, 0, 1)  # scipy imported and its direction numbers read, before measuring
    # Given a 10^7-point design (80 MB a feature) whose last 1,000 rows are wanted
    tracemalloc.start()
    try:
        # When they are generated
        rows = generate_rows(method, n, SEED, low, high, points - 1_000, points)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then they cost memory of the order of those rows (8 bytes x 1,000 x d), not of the design
    assert rows.shape == (1_000, dimensions)
    assert peak < 10 * 2**20, peak


@pytest.mark.parametrize(("start", "stop"), [(-1, 10), (10, 9), (0, 1_001), (1_000, 1_001)])
def test_rows_outside_the_design_are_refused(start: int, stop: int):
    # Given a 1,000-point design, When rows outside it are asked for, Then it says which and how many there are
    with pytest.raises(ValueError, match=f"rows {start}:{stop} .* 1000 points"):
        generate_rows("lhs", 1_000, SEED, LOWER, UPPER, start, stop)
