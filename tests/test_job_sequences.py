"""handler/jobs/sequences.py: any rows of scipy's scrambled Sobol' and Halton sequences, bit for bit, from numpy
alone; so a job's chunks generate their own slices of a design without scipy in the worker's package."""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import qmc
from scipy.stats._sobol import _initialize_v

from handler.jobs.sequences import (
    DIRECTIONS_FILE,
    MAX_SOBOL_POINTS,
    SOBOL_BITS,
    engine_rng,
    halton_rows,
    max_sobol_dimensions,
    sobol_directions,
    sobol_rows,
    sobol_scramble,
)
from scripts import build_function, export_sobol_directions
from tests.conftest import ROOT

ROWS = Callable[[int, int, int, int], np.ndarray]
ENGINES: dict[str, tuple[ROWS, type[qmc.QMCEngine]]] = {
    "sobol": (sobol_rows, qmc.Sobol),
    "halton": (halton_rows, qmc.Halton),
}
SEEDS = (0, 1, 12345)
N = 1000  # not a power of two: scipy warns, the rows are what they are


@functools.cache
def scipy_design(engine: str, dimensions: int, seed: int, n: int) -> np.ndarray:
    """The design as the worker generated it with scipy, in one piece."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*balance properties.*", category=UserWarning)
        return ENGINES[engine][1](dimensions, scramble=True, rng=np.random.default_rng(seed)).random(n)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dimensions", [1, 2, 4, 8])
@pytest.mark.parametrize("engine", ENGINES)
def test_any_rows_equal_scipys_one_piece_design_bit_for_bit(engine: str, dimensions: int, seed: int):
    # given scipy's design of N points
    expected = scipy_design(engine, dimensions, seed, N)
    rows = ENGINES[engine][0]
    # when rows are asked for from the start, in the middle, at the end, and one at a time
    for start, stop in ((0, N), (0, 1), (317, 702), (N - 1, N), (500, 501)):
        got = rows(dimensions, seed, start, stop)
        # then each is scipy's, the first point (scipy's special case) included
        assert got.dtype == np.float64
        assert got.shape == (stop - start, dimensions)
        assert np.array_equal(got, expected[start:stop]), (start, stop)
    assert ((expected >= 0) & (expected < 1)).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_chunks_generated_apart_are_the_design_generated_in_one_piece(engine: str):
    # given uneven chunks covering a design, as a job's workers take them
    bounds = [0, 1, 2, 255, 256, 257, 640, 999, N]
    rows = ENGINES[engine][0]
    # when each chunk generates its own rows
    chunks = [rows(4, 12345, start, stop) for start, stop in itertools.pairwise(bounds)]
    # then their union is scipy's one-piece design
    assert np.array_equal(np.concatenate(chunks), scipy_design(engine, 4, 12345, N))


@pytest.mark.parametrize(("dimensions", "seed"), [(1, 0), (2, 1), (4, 12345), (8, 0)])
@pytest.mark.parametrize("engine", ENGINES)
def test_rows_past_a_million_equal_scipys_without_generating_those_before(engine: str, dimensions: int, seed: int):
    # given rows across 2^20, where Sobol's Gray code changes its highest bit and the integers carry
    start, stop = 2**20 - 5, 2**20 + 7
    # when
    got = ENGINES[engine][0](dimensions, seed, start, stop)
    # then
    assert np.array_equal(got, scipy_design(engine, dimensions, seed, stop)[start:])


def test_the_scrambled_direction_numbers_are_scipys_so_every_bit_of_the_index_is_covered():
    # given scipy's engine: its scrambled direction numbers (all 30 columns, those of indices up to 2^30 too)
    engine = qmc.Sobol(8, scramble=True, rng=np.random.default_rng(12345))
    # when
    directions, shift = sobol_scramble(sobol_directions(8), engine_rng(12345))
    # then
    assert np.array_equal(directions, engine._sv)
    assert np.array_equal(shift, engine._shift)


def test_no_sobol_point_past_two_to_the_thirty():
    # given the last point scipy can give (it has 2^30 with 30 bits), then one more
    assert sobol_rows(3, 1, MAX_SOBOL_POINTS - 1, MAX_SOBOL_POINTS).shape == (1, 3)
    # when / then refused, as scipy refuses it
    with pytest.raises(ValueError, match=r"2\*\*30"):
        sobol_rows(3, 1, MAX_SOBOL_POINTS - 1, MAX_SOBOL_POINTS + 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_rows_equal_scipys_at_the_most_dimensions(seed: int):
    # given scipy's largest Sobol' dimension (its whole direction table ships) and Halton beyond scipy's prime list
    sobol_dimensions, halton_dimensions = max_sobol_dimensions(), 200
    assert sobol_dimensions == qmc.Sobol.MAXDIM
    # when
    sobol = sobol_rows(sobol_dimensions, seed, 19, 33)
    halton = halton_rows(halton_dimensions, seed, 19, 33)
    # then
    assert np.array_equal(sobol, scipy_design("sobol", sobol_dimensions, seed, 33)[19:])
    assert np.array_equal(halton, scipy_design("halton", halton_dimensions, seed, 33)[19:])


def test_the_shipped_direction_numbers_are_scipys():
    # given scipy's table and the file beside the module
    with np.load(Path(qmc.__file__).with_name("_sobol_direction_numbers.npz")) as table:
        poly, vinit = table["poly"], table["vinit"]
    with np.load(DIRECTIONS_FILE) as shipped:
        # then the numbers are scipy's, every dimension
        assert np.array_equal(shipped["poly"], poly)
        assert np.array_equal(shipped["vinit"], vinit)
    # and the direction numbers derived from them are scipy's _initialize_v
    for dimensions in (1, 2, 40, 1111):
        expected = np.zeros((dimensions, SOBOL_BITS), dtype=np.uint32)
        _initialize_v(expected, dim=dimensions, bits=SOBOL_BITS)
        assert np.array_equal(sobol_directions(dimensions), expected), dimensions


def test_the_export_script_writes_the_shipped_file_byte_for_byte(tmp_path: Path):
    # given
    written = tmp_path / "sobol_directions.npz"
    # when
    export_sobol_directions.write(written)
    # then regenerating the file changes nothing in the tree
    assert written.read_bytes() == DIRECTIONS_FILE.read_bytes()


def test_no_warning_whatever_the_point_count():
    # given counts that are not powers of two (scipy warns about the balance properties)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # when / then
        sobol_rows(2, 0, 0, 3)
        sobol_rows(2, 0, 5, 12)
        halton_rows(2, 0, 0, 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_empty_range_is_no_rows_and_a_reversed_one_is_refused(engine: str):
    rows = ENGINES[engine][0]
    # when / then
    assert rows(3, 0, 7, 7).shape == (0, 3)
    with pytest.raises(ValueError, match="start <= stop"):
        rows(3, 0, 8, 7)
    with pytest.raises(ValueError, match="dimension"):
        rows(0, 0, 0, 1)


def test_sobol_dimensions_beyond_the_table_are_refused():
    with pytest.raises(ValueError, match=f"1 to {max_sobol_dimensions()} dimensions"):
        sobol_rows(max_sobol_dimensions() + 1, 0, 0, 1)


@pytest.mark.parametrize("package", ["worker", "predict", "training"])
def test_packages_that_carry_the_module_carry_its_direction_numbers(package: str):
    # when a function's package is assembled (scripts/build_function.py copies handler/'s *.py, and data on its own)
    carried = build_function.handler_files(package)
    # then
    assert ROOT / "handler" / "jobs" / "sequences.py" in carried
    assert DIRECTIONS_FILE in carried


NO_SCIPY = r"""
import importlib.abc, sys

attempts = []


class Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "scipy":
            attempts.append(name)
            raise ImportError(f"{name} is forbidden here")
        return None


sys.meta_path.insert(0, Forbidden())
sys.path.insert(0, sys.argv[1])
from handler.jobs.sequences import halton_rows, sobol_rows

print(sobol_rows(3, 1, 10, 20).sum() + halton_rows(3, 1, 10, 20).sum())
assert not attempts, attempts
assert not [name for name in sys.modules if name.split(".")[0] == "scipy"]
"""


def test_the_module_generates_rows_without_scipy():
    # given a fresh interpreter where importing scipy fails and is recorded
    # when it imports the module and generates rows of both sequences
    result = subprocess.run(
        [sys.executable, "-c", NO_SCIPY, str(ROOT)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    # then nothing reached for scipy
    assert result.returncode == 0, result.stderr
