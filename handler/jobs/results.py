"""A job's results file, written in one pass over its chunks: CSV, .npy or Parquet.

Every format holds one row per input point, in input order: the features, then each output's
statistics. pyarrow writes CSV and Parquet (its CSV writer is C++ and keeps every digit of a
float64); the .npy is a structured array, so its columns keep their names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

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


def write_results(fmt: str, sink: IO[bytes], n_points: int, columns: list[str], batches: Iterable[np.ndarray]) -> int:
    """Write the batches (rows x len(columns) float64) to `sink` as `fmt`; returns the rows written."""
    written = 0
    if fmt == "npy":
        # A structured array of float64 fields has the same bytes as the 2-D array, row by row.
        sink.write(npy_header((n_points,), np.dtype([(name, "<f8") for name in columns])))
        for batch in batches:
            sink.write(np.ascontiguousarray(batch, dtype="<f8").tobytes())
            written += len(batch)
        return written
    import pyarrow as pa

    schema = pa.schema([(name, pa.float64()) for name in columns])
    writer: Any
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        writer = pa_csv.CSVWriter(sink, schema)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(sink, schema, compression="zstd")
    else:
        raise ValueError(f"unknown results format {fmt!r}")
    with writer:
        for batch in batches:
            writer.write_table(pa.Table.from_arrays([pa.array(column) for column in batch.T], schema=schema))
            written += len(batch)
    return written
