"""The model file that holds numbers, not objects: a GP posterior as named float64 arrays in an .npz.

Format (docs/model-format.md): a zip archive of uncompressed NumPy `.npy` members, as `numpy.savez` writes it, read
with `allow_pickle=False`. The manifest lists every member with its shape and the sha256 of its little-endian
bytes, so a member is checked before it is used and the file can be read from any language. Nothing here imports
GPy, scipy or pickle.
"""

from __future__ import annotations

import hashlib
import io
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
VARIANCE_FACTOR = {"exact": "cholesky_inverse", "sparse": "woodbury_inverse"}  # (m, m) each
MAX_INPUTS = 50_000  # m: an (m, m) factor of 50,000 is 20 GB, far past what a function holds
_NPY_HEADER_BYTES = 4096  # numpy writes headers of 64-byte multiples; ours are ~128 bytes


class PosteriorFileError(ValueError):
    """The file is not the posterior its manifest describes; the message says what differs."""


def members(inference: str) -> dict[str, tuple[str, ...]]:
    """Every member of a posterior file of this inference, with its symbolic shape."""
    if inference not in INFERENCES:
        raise PosteriorFileError(f"inference must be one of {', '.join(INFERENCES)}, got {inference!r}")
    return {**MEMBERS, VARIANCE_FACTOR[inference]: ("m", "m")}


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(array, dtype="<f8").tobytes(order="C")).hexdigest()


def encode(arrays: Mapping[str, np.ndarray], inference: str) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and the manifest's description of them ({"inference", "arrays": {name: shape, sha256}})."""
    expected = members(inference)
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


def read(path: Path, description: Any, n_features: int, n_outputs: int) -> dict[str, np.ndarray]:
    """The arrays of a posterior file, each checked against the manifest's `posterior` description."""
    inference, listed = _described(description)
    expected = members(inference)
    if set(listed) != set(expected):
        raise PosteriorFileError(f"the manifest lists arrays {sorted(listed)}, expected {sorted(expected)}")
    m = _declared_m(listed)
    sizes = {"m": m, "d": n_features, "p": n_outputs}
    shapes = {name: tuple(sizes[s] for s in symbolic) for name, symbolic in expected.items()}
    for name, shape in shapes.items():
        if tuple(listed[name].get("shape", ())) != shape:
            raise PosteriorFileError(f"{name}: the manifest says shape {listed[name].get('shape')}, expected {shape}")
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        if set(infos) != {f"{name}.npy" for name in expected}:
            raise PosteriorFileError(f"the file holds {sorted(infos)[:10]}, expected {sorted(expected)} as .npy")
        for name, shape in shapes.items():
            info = infos[f"{name}.npy"]
            # Sizes are checked before anything is read: a small file must not inflate into gigabytes.
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > 8 * int(np.prod(shape)) + _NPY_HEADER_BYTES:
                raise PosteriorFileError(f"{name}: stored compressed or larger than its shape {shape} needs")
            with archive.open(info) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
            if array.dtype != np.dtype("<f8") or array.shape != shape:
                raise PosteriorFileError(f"{name}: expected float64 {shape}, got {array.dtype} {array.shape}")
            if array_sha256(array) != listed[name].get("sha256"):
                raise PosteriorFileError(f"{name}: its sha256 differs from the manifest's")
            if not np.isfinite(array).all():
                raise PosteriorFileError(f"{name}: holds values that are not finite")
            arrays[name] = array
    for name in ("lengthscale", "kernel_variance", "y_std"):
        if not (arrays[name] > 0).all():
            raise PosteriorFileError(f"{name}: must be positive")
    if not arrays["noise_variance"] >= 0:
        raise PosteriorFileError("noise_variance: must not be negative")
    return arrays


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
