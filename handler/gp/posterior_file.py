"""The model file that holds numbers, not objects: a GP posterior as named float64 arrays in an .npz.

Format (docs/model-format.md): a zip archive of uncompressed NumPy `.npy` members, as `numpy.savez` writes it, read
with `allow_pickle=False`. The manifest lists every member with its shape and the sha256 of its little-endian
bytes, so a member is checked before it is used and the file can be read from any language. Nothing here imports
GPy, scipy or pickle.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "npz"
INFERENCES = ("exact", "sparse")
KERNELS = ("RBF", "Exponential", "Matern32", "Matern52")
# name -> shape in terms of m (training or inducing inputs), d (features) and p (outputs)
MEMBERS: dict[str, tuple[str, ...]] = {
    "inputs": ("m", "d"),
    "lengthscale": ("d",),
    "kernel_variance": (),
    "noise_variance": (),
    "woodbury_vector": ("m", "p"),
    "y_mean": ("p",),
    "y_std": ("p",),
}
# (m, m) each. Exact: L, the lower triangular Cholesky factor of K + s2 I (as GPy factored it). Files written before
# L was stored hold its inverse instead (LEGACY_VARIANCE_FACTOR): still read, served as before.
VARIANCE_FACTOR = {"exact": "cholesky", "sparse": "woodbury_inverse"}
LEGACY_VARIANCE_FACTOR = {"exact": "cholesky_inverse"}
# The training points, in a file whose model publishes them (the manifest's `published_training_data`): n of them.
TRAINING_MEMBERS: dict[str, tuple[str, ...]] = {"training_inputs": ("n", "d"), "training_outputs": ("n", "p")}
# GET /model/training-data answers every published value as JSON (~20 bytes each): 200,000 make ~4 MB, under
# Lambda's 6 MB response limit. Packaging refuses to publish more.
MAX_PUBLISHED_VALUES = 200_000
# m: the (m, m) factor is held once (8 m^2 bytes) and predictions cost m^2 per point. At 8,000 it is 512 MB, which
# a 1769 MB function loads (measured: loading peaks near twice the factor) and answers 1,000 points of in ~0.2 s.
MAX_INPUTS = 8_000
# What all of a file's arrays may hold: the factor at MAX_INPUTS (512 MiB) and 128 MiB for the rest (8,000 inputs of
# 2,000 features). A manifest declaring more is refused before the file is hashed, downloaded or opened.
MAX_DATA_BYTES = 8 * MAX_INPUTS**2 + 128 * 2**20
_NPY_HEADER_BYTES = 4096  # numpy writes headers of 64-byte multiples; ours are ~128 bytes
_ZIP_OVERHEAD_BYTES = 512  # per member: its local header and central directory entry (names are short)
# A member is read into its array in pieces of this size: zipfile's readinto reads the whole request as one bytes
# object and copies it, so one readinto of the whole member took 3x its size at the peak (benchmarks/registry.py).
READ_CHUNK_BYTES = 4 * 2**20


class PosteriorFileError(ValueError):
    """The file is not the posterior its manifest describes; the message says what differs."""


def members(inference: str, training: tuple[str, ...] = (), *, legacy: bool = False) -> dict[str, tuple[str, ...]]:
    """Every member of a posterior file of this inference, with its symbolic shape; `training`: the published
    training members it holds as well (`training_inputs`, and `training_outputs` with it); `legacy`: a file written
    before exact inference stored its Cholesky factor (it holds the factor's inverse)."""
    if inference not in INFERENCES:
        raise PosteriorFileError(f"inference must be one of {', '.join(INFERENCES)}, got {inference!r}")
    if set(training) not in ({*()}, {"training_inputs"}, {"training_inputs", "training_outputs"}):
        raise PosteriorFileError("training_outputs come with training_inputs")
    factor = LEGACY_VARIANCE_FACTOR[inference] if legacy and inference in LEGACY_VARIANCE_FACTOR else None
    factor = factor or VARIANCE_FACTOR[inference]
    return {**MEMBERS, factor: ("m", "m"), **{name: TRAINING_MEMBERS[name] for name in training}}


def _members_of(inference: Any, names: Any) -> dict[str, tuple[str, ...]]:
    legacy = LEGACY_VARIANCE_FACTOR.get(inference) in names
    return members(inference, tuple(name for name in TRAINING_MEMBERS if name in names), legacy=legacy)


def array_sha256(array: np.ndarray) -> str:
    clean = np.ascontiguousarray(array, dtype="<f8") if array.ndim else np.asarray(array, dtype="<f8")
    return hashlib.sha256(memoryview(clean).cast("B")).hexdigest()  # no copy of an array already in order


def encode(arrays: Mapping[str, np.ndarray], inference: str) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and the manifest's description of them ({"inference", "arrays": {name: shape, sha256}})."""
    expected = _members_of(inference, arrays)
    if set(arrays) != set(expected):
        raise PosteriorFileError(f"expected arrays {sorted(expected)}, got {sorted(arrays)}")
    clean = {name: np.array(arrays[name], dtype="<f8", order="C") for name in expected}  # 0-d stays 0-d
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **clean)
    description = {
        "inference": inference,
        "arrays": {name: {"shape": list(a.shape), "sha256": array_sha256(a)} for name, a in clean.items()},
    }
    return buffer.getvalue(), description


def expected_shapes(description: Any, n_features: int, n_outputs: int) -> dict[str, tuple[int, ...]]:
    """Each array's shape, from the manifest's `posterior` description; PosteriorFileError if it does not fit."""
    inference, listed = _described(description)
    expected = _members_of(inference, listed)
    if set(listed) != set(expected):
        raise PosteriorFileError(f"the manifest lists arrays {sorted(listed)}, expected {sorted(expected)}")
    sizes = {"m": _declared_m(listed), "d": n_features, "p": n_outputs}
    if "training_inputs" in listed:
        sizes["n"] = _declared_n(listed, n_features + n_outputs * ("training_outputs" in listed))
    shapes = {name: tuple(sizes[s] for s in symbolic) for name, symbolic in expected.items()}
    for name, shape in shapes.items():
        if tuple(listed[name].get("shape", ())) != shape:
            raise PosteriorFileError(f"{name}: the manifest says shape {listed[name].get('shape')}, expected {shape}")
    if (declared := sum(8 * math.prod(shape) for shape in shapes.values())) > MAX_DATA_BYTES:
        raise PosteriorFileError(f"the manifest's arrays hold {declared} bytes, more than the {MAX_DATA_BYTES} allowed")
    return shapes


def largest_file_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """The most bytes a posterior file of these shapes takes: checked before the file is hashed or opened."""
    return sum(8 * math.prod(shape) + _NPY_HEADER_BYTES + _ZIP_OVERHEAD_BYTES for shape in shapes.values()) + 4096


def read(path: Path, description: Any, n_features: int, n_outputs: int) -> dict[str, np.ndarray]:
    """The arrays of a posterior file, each checked against the manifest's `posterior` description.

    Nothing is read, decompressed or allocated beyond what the file holds and the declared shapes need: the
    declared sizes (capped), the file's size, its entry count, each member's size in the zip directory (against its
    shape and against the file) and its .npy header are checked before its data is allocated.
    """
    _, listed = _described(description)
    shapes = expected_shapes(description, n_features, n_outputs)
    file_bytes = path.stat().st_size
    if file_bytes > largest_file_bytes(shapes):
        raise PosteriorFileError("the file is larger than its manifest's arrays need")
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if sorted(info.filename for info in infos) != sorted(f"{name}.npy" for name in shapes):
            raise PosteriorFileError(f"the file holds {len(infos)} entries, expected exactly {sorted(shapes)} as .npy")
        by_name = {info.filename: info for info in infos}
        for name, shape in shapes.items():
            info = by_name[f"{name}.npy"]
            data_bytes = 8 * math.prod(shape)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > data_bytes + _NPY_HEADER_BYTES:
                raise PosteriorFileError(f"{name}: stored compressed or larger than its shape {shape} needs")
            # The zip directory's sizes, against the shape and the file, before anything the size of the data
            # is allocated: a member shorter than its shape (or claiming bytes past the file's end) is refused here.
            if info.file_size < data_bytes or info.compress_size != info.file_size:
                raise PosteriorFileError(f"{name}: holds fewer bytes than its shape {shape} needs")
            if info.header_offset + info.compress_size > file_bytes:
                raise PosteriorFileError(f"{name}: the zip directory places it past the end of the file")
            with archive.open(info) as member:
                array = _read_npy(member, name, shape, data_bytes, info.file_size)
            if array_sha256(array) != listed[name].get("sha256"):
                raise PosteriorFileError(f"{name}: its sha256 differs from the manifest's")
            if not np.isfinite(array).all():
                raise PosteriorFileError(f"{name}: holds values that are not finite")
            arrays[name] = array
    for name in ("lengthscale", "kernel_variance", "y_std"):
        if not (arrays[name] > 0).all():
            raise PosteriorFileError(f"{name}: must be positive")
    if "cholesky" in arrays:
        _check_cholesky(arrays["cholesky"])
    if not arrays["noise_variance"] >= 0:
        raise PosteriorFileError("noise_variance: must not be negative")
    return arrays


def _check_cholesky(factor: np.ndarray) -> None:
    """A Cholesky factor: lower triangular (its upper triangle exactly zero), with a positive diagonal."""
    if not (np.diagonal(factor) > 0).all():
        raise PosteriorFileError("cholesky: its diagonal must be positive")
    for row in range(len(factor) - 1):  # row by row: no (m, m) temporary
        if factor[row, row + 1 :].any():
            raise PosteriorFileError("cholesky: must be lower triangular (its upper triangle zero)")


def _read_npy(member: Any, name: str, shape: tuple[int, ...], data_bytes: int, member_bytes: int) -> np.ndarray:
    """An .npy member's array, its header and size compared with the expected shape before its data is allocated."""
    try:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        header_shape, fortran_order, dtype = read_header(member)
    except (ValueError, OSError) as exc:
        raise PosteriorFileError(f"{name}: not an .npy member ({exc})"[:200]) from None
    if dtype != np.dtype("<f8") or tuple(header_shape) != shape or fortran_order:
        order = "Fortran" if fortran_order else "C"
        raise PosteriorFileError(f"{name}: expected float64 {shape} in C order, got {dtype} {header_shape} in {order}")
    if member_bytes - member.tell() != data_bytes:
        raise PosteriorFileError(f"{name}: holds more or fewer bytes than its shape {shape} needs")
    data = bytearray(data_bytes)
    view, filled = memoryview(data), 0
    while filled < data_bytes and (got := member.readinto(view[filled : filled + READ_CHUNK_BYTES])):
        filled += got
    view.release()
    if filled != data_bytes or member.read(1):
        raise PosteriorFileError(f"{name}: holds more or fewer bytes than its shape {shape} needs")
    return np.frombuffer(data, dtype="<f8").reshape(shape)  # writable: the bytearray is the array's memory


def _described(description: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(description, dict) or not isinstance(description.get("arrays"), dict):
        raise PosteriorFileError("the manifest's posterior must be an object with inference and arrays")
    listed = description["arrays"]
    if not all(isinstance(entry, dict) for entry in listed.values()):
        raise PosteriorFileError("each of the manifest's posterior arrays must be an object with shape and sha256")
    return description.get("inference"), listed  # type: ignore[return-value]


def _declared_m(listed: dict[str, Any]) -> int:
    shape = listed.get("inputs", {}).get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and type(shape[0]) is int and 1 <= shape[0] <= MAX_INPUTS):
        raise PosteriorFileError(f"inputs: the manifest's shape must be [m, d] with 1 <= m <= {MAX_INPUTS}")
    return shape[0]


def _declared_n(listed: dict[str, Any], values_per_point: int) -> int:
    shape = listed["training_inputs"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and type(shape[0]) is int and shape[0] >= 1):
        raise PosteriorFileError("training_inputs: the manifest's shape must be [n, d] with n >= 1")
    if shape[0] * values_per_point > MAX_PUBLISHED_VALUES:
        raise PosteriorFileError(f"training_inputs: more than {MAX_PUBLISHED_VALUES} published values")
    return shape[0]
