"""Seconds for one job chunk's rows of a scrambled Sobol' or Halton design: handler/jobs/sequences.py (numpy alone,
the row range computed directly) against scipy.stats.qmc, which generates every row before the chunk and slices
(Sobol' also with fast_forward, which still walks the skipped rows one XOR each).

Rows [0, 200,000) and [9,800,000, 10,000,000) (the first and last chunk of a 10^7-point job at the default chunk
size), 4 dimensions, medians of 5, one thread. Each measured range is checked equal to scipy's first.

    python benchmarks/sequences.py            # ~1-2 minutes (scipy's Halton slice is ~10 s a run)
    python benchmarks/sequences.py --quick    # rows [0, 20,000) and [980,000, 1,000,000), 3 repeats
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import qmc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.jobs.sequences import halton_rows, sobol_rows  # noqa: E402

DIMENSIONS, SEED = 4, 12345


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scipy_engine(kind: type[qmc.QMCEngine]) -> qmc.QMCEngine:
    return kind(DIMENSIONS, scramble=True, rng=np.random.default_rng(SEED))


def scipy_slice(kind: type[qmc.QMCEngine], start: int, stop: int) -> np.ndarray:
    return scipy_engine(kind).random(stop)[start:stop]


def scipy_fast_forward(start: int, stop: int) -> np.ndarray:
    engine = scipy_engine(qmc.Sobol)
    if start:
        engine.fast_forward(start)
    return engine.random(stop - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x fewer rows, 3 repeats")
    args = parser.parse_args(argv)
    scale, repeats = (10, 3) if args.quick else (1, 5)
    chunk, total = 200_000 // scale, 10_000_000 // scale
    warnings.filterwarnings("ignore", message=".*balance properties.*", category=UserWarning)
    print("| rows | sequence | handler/jobs/sequences.py | scipy: random(stop)[start:] | scipy: fast_forward(start) |")
    print("|---|---|---:|---:|---:|")
    for start, stop in ((0, chunk), (total - chunk, total)):
        for name, ours, kind in (("Sobol'", sobol_rows, qmc.Sobol), ("Halton", halton_rows, qmc.Halton)):
            expected = scipy_fast_forward(start, stop) if kind is qmc.Sobol else scipy_slice(kind, start, stop)
            assert np.array_equal(ours(DIMENSIONS, SEED, start, stop), expected), (name, start, stop)
            mine = median_seconds(partial(ours, DIMENSIONS, SEED, start, stop), repeats)
            sliced = median_seconds(partial(scipy_slice, kind, start, stop), repeats)
            forward = "-"
            if kind is qmc.Sobol:
                forward = f"{median_seconds(partial(scipy_fast_forward, start, stop), repeats):.3f} s"
            print(f"| [{start:,}, {stop:,}) | {name} | {mine:.3f} s | {sliced:.3f} s | {forward} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
