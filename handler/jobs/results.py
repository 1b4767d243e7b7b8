"""A job's results, written by its chunks in the final format: CSV, .npy or Parquet.

Every format holds one row per input point, in input order: the features, then each output's
statistics. pyarrow writes CSV and Parquet (its CSV writer is C++ and keeps every digit of a
float64); the .npy is a structured array, so its columns keep their names. The worker writes each
chunk's part (`encode_part`); the finisher stitches csv and npy parts (handler.jobs.stitching).
"""

from __future__ import annotations

from typing import Any

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


# Rows encoded at once into a CSV part: pyarrow's copy of them is a slice's (a few MB), not the chunk's. A Parquet
# part is written whole, one row group (a row group a slice would make its files ~6% larger at 100 columns).
ENCODE_SLICE_ROWS = 50_000


def encode_part(fmt: str, index: int, n_points: int, columns: list[str], rows: np.ndarray) -> memoryview:
    """Chunk `index`'s rows (rows x len(columns) float64) as its part of the results in `fmt`.

    csv and npy parts concatenate, in chunk order, into the file one writer would have written: the header (the CSV's
    names, or the .npy's with all `n_points` rows) opens part 0 alone. A Parquet part is a whole file (a footer holds
    absolute offsets, so files do not concatenate): the parts are a dataset. The encoded part is held once, not copied
    (a CSV's table a slice at a time): at 200,000 points x 100 columns encoding costs ~620 MB (CSV), ~510 MB
    (Parquet), ~150 MB (npy) beside the rows, where copies made it ~970, ~600 and ~305 MB.
    """
    if fmt == "npy":
        # A structured array of float64 fields has the same bytes as the 2-D array, row by row.
        header = npy_header((n_points,), np.dtype([(name, "<f8") for name in columns])) if index == 0 else b""
        part = bytearray(header)
        part += memoryview(np.ascontiguousarray(rows, dtype="<f8")).cast("B")  # one copy (a slice assignment makes two)
        return memoryview(part)
    import pyarrow as pa

    schema = pa.schema([(name, pa.float64()) for name in columns])
    sink = pa.BufferOutputStream()
    writer: Any
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        writer = pa_csv.CSVWriter(sink, schema, write_options=pa_csv.WriteOptions(include_header=index == 0))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(sink, schema, compression="zstd")
    else:
        raise ValueError(f"unknown results format {fmt!r}")
    slice_rows = ENCODE_SLICE_ROWS if fmt == "csv" else max(1, len(rows))
    with writer:
        for start in range(0, len(rows), slice_rows):
            block = np.asarray(rows[start : start + slice_rows], dtype=float)
            writer.write_table(pa.Table.from_arrays([pa.array(column) for column in block.T], schema=schema))
    return memoryview(sink.getvalue())
