"""A job's results, written by its chunks in the final format: CSV, .npy or Parquet.

Every format holds one row per input point, in input order: the features, then each output's
statistics. pyarrow writes CSV and Parquet (its CSV writer is C++ and keeps every digit of a
float64); the .npy is a structured array, so its columns keep their names. The worker writes each
chunk's part (`encode_part`); the finisher stitches csv and npy parts (handler.jobs.stitching).
"""

from __future__ import annotations

import numpy as np

from handler.gp.posterior import Z_95
from handler.jobs.backend import OutputOptions, npy_header


def result_rows(points: np.ndarray, predictions: np.ndarray, n_outputs: int, options: OutputOptions) -> np.ndarray:
    """Inputs beside each output's statistics, in `result_columns` order; `predictions` is [means | variances]."""
    columns = [points]
    for output in range(n_outputs):
        mean, variance = predictions[:, output], predictions[:, n_outputs + output]
        stats = [mean, variance]
        if options.include_std or options.include_interval:
            std = np.sqrt(variance)
            if options.include_std:
                stats.append(std)
            if options.include_interval:
                stats += [mean - Z_95 * std, mean + Z_95 * std]
        columns.append(np.column_stack(stats))
    return np.hstack(columns)


def encode_part(fmt: str, index: int, n_points: int, columns: list[str], rows: np.ndarray) -> bytes:
    """Chunk `index`'s rows (rows x len(columns) float64) as its part of the results in `fmt`.

    csv and npy parts concatenate, in chunk order, into the file one writer would have written: the header (the CSV's
    names, or the .npy's with all `n_points` rows) opens part 0 alone. A Parquet part is a whole file (a footer holds
    absolute offsets, so files do not concatenate): the parts are a dataset.
    """
    if fmt == "npy":
        # A structured array of float64 fields has the same bytes as the 2-D array, row by row.
        header = npy_header((n_points,), np.dtype([(name, "<f8") for name in columns])) if index == 0 else b""
        return header + np.ascontiguousarray(rows, dtype="<f8").tobytes()
    import pyarrow as pa

    schema = pa.schema([(name, pa.float64()) for name in columns])
    table = pa.Table.from_arrays([pa.array(column) for column in np.asarray(rows, dtype=float).T], schema=schema)
    sink = pa.BufferOutputStream()
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=index == 0))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, sink, compression="zstd")
    else:
        raise ValueError(f"unknown results format {fmt!r}")
    return bytes(sink.getvalue())
