"""Write handler/jobs/sobol_directions.npz, the Sobol' direction numbers handler/jobs/sequences.py reads, from
scipy's own table (scipy/stats/_sobol_direction_numbers.npz), so that the job worker ships without scipy.

All of scipy's 21201 dimensions by default (~0.5 MB): a served model's manifest does not bound its features, and a
Sobol' design of any dimension scipy accepts stays possible. The file is the same bytes for the same table (fixed
zip timestamps); tests/test_job_sequences.py checks its numbers against scipy's.

python scripts/export_sobol_directions.py [--dimensions D]
"""

from __future__ import annotations

import argparse
import importlib.resources
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIRECTIONS_PATH = ROOT / "handler" / "jobs" / "sobol_directions.npz"


def scipy_table() -> tuple[np.ndarray, np.ndarray]:
    """scipy's (poly, vinit): each dimension's primitive polynomial and its initial direction numbers."""
    source = importlib.resources.files("scipy.stats").joinpath("_sobol_direction_numbers.npz")
    with importlib.resources.as_file(source) as path, np.load(path) as table:
        return table["poly"], table["vinit"]


def write(path: Path, dimensions: int | None = None) -> None:
    poly, vinit = scipy_table()
    arrays = {"poly": poly[:dimensions].astype(np.uint32), "vinit": vinit[:dimensions].astype(np.uint32)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimensions", type=int, default=None, help="only the first D dimensions (default: all)")
    args = parser.parse_args(argv)
    write(DIRECTIONS_PATH, args.dimensions)
    print(f"wrote {DIRECTIONS_PATH.relative_to(ROOT)} ({DIRECTIONS_PATH.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
