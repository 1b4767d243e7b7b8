"""The posterior file (handler.gp.posterior_file): numbers only, checked before use, equal to the model it came from."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from handler.gp import blas, posterior_file
from handler.gp.from_gpy import posterior_arrays, posterior_from_gpy
from handler.gp.posterior import KERNELS, GPPosterior
from handler.gp.posterior_file import PosteriorFileError
from tests.conftest import built_once


@pytest.fixture(scope="module", params=["exact", "sparse"])
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A small GPy model (2 outputs, normalised), exact or sparse, with its kernel, inference and arrays.

    Fitted once per test run (the sparse fit takes seconds) and pickled for every worker: each loads its own.
    """

    def build(folder: Path) -> None:
        import GPy

        rng = np.random.default_rng(3)
        X = rng.uniform(-1, 2, size=(40, 3))
        Y = np.column_stack([np.sin(X @ [1.0, 2.0, 0.5]), X[:, 0] ** 2 - X[:, 2]])
        kernel = GPy.kern.Matern52(3, ARD=True)
        if request.param == "exact":
            gp = GPy.models.GPRegression(X, Y, kernel, normalizer=True)
        else:
            np.random.seed(3)
            gp = GPy.models.SparseGPRegression(X, Y, kernel, num_inducing=12, normalizer=True)
        gp.optimize(max_iters=100)
        (folder / "gp.pkl").write_bytes(pickle.dumps(gp))

    gp = pickle.loads((built_once(tmp_path_factory, f"posterior-file-{request.param}", build) / "gp.pkl").read_bytes())
    return gp, *posterior_arrays(gp)


def written(tmp_path: Path, arrays: dict, inference: str) -> tuple[Path, dict]:
    data, description = posterior_file.encode(arrays, inference)
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    return path, description


def test_a_posterior_read_back_from_its_file_predicts_exactly_as_before(fitted, tmp_path: Path):
    # given a model's posterior, and the same posterior written to a file and read back
    gp, kernel, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    from_file = GPPosterior.from_arrays(kernel, posterior_file.read(path, description, 3, 2))
    in_memory = posterior_from_gpy(gp)
    X = np.random.default_rng(0).uniform(-1, 2, size=(300, 3))
    # then every answer is the same to the bit: the file holds the very numbers
    for latent in (False, True):
        assert np.array_equal(from_file.predict(X, latent=latent).mean, in_memory.predict(X, latent=latent).mean)
        assert np.array_equal(
            from_file.predict(X, latent=latent).variance, in_memory.predict(X, latent=latent).variance
        )
    assert np.array_equal(from_file.covariance(X[:20]), in_memory.covariance(X[:20]))
    # and a posterior's arrays are what it was built from
    assert {k: v.tolist() for k, v in from_file.arrays().items()} == {k: v.tolist() for k, v in arrays.items()}


def test_the_file_is_plain_npy_members_that_numpy_reads_without_pickle(fitted, tmp_path: Path):
    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(posterior_file.members(inference))
        assert all(npz[name].dtype == np.dtype("<f8") for name in npz.files)
    assert description["inference"] == inference
    assert json.dumps(description)  # the manifest's part is plain JSON


def _rewrite_member(path: Path, name: str, data: bytes, compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[f"{name}.npy"] = data
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content, compress_type=compress if member == f"{name}.npy" else zipfile.ZIP_STORED)


def _c(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda p, a: _rewrite_member(
                p, "woodbury_vector", _npy(np.ascontiguousarray(a["woodbury_vector"]) * (1 + 1e-12))
            ),
            "sha256",
        ),
        (lambda p, a: _rewrite_member(p, "y_std", _npy(a["y_std"].astype("<f4"))), "expected float64"),
        (lambda p, a: _rewrite_member(p, "lengthscale", _npy(np.zeros(3))), "sha256|positive"),
        (lambda p, a: _rewrite_member(p, "inputs", _npy(a["inputs"]), zipfile.ZIP_DEFLATED), "compressed"),
        (lambda p, a: _rewrite_member(p, "y_mean", _npy(np.zeros(10**6))), "larger than"),
        (lambda p, a: _rewrite_member(p, "y_mean", _npy(np.zeros(3))), "expected float64"),
        (lambda p, a: _rewrite_member(p, "inputs", _npy(np.asfortranarray(a["inputs"]))), "in Fortran"),
        (lambda p, a: _rewrite_member(p, "extra", _npy(np.zeros(1))), "holds"),
    ],
    ids=["changed-value", "float32", "zero-lengthscale", "compressed", "oversized", "wrong-shape", "fortran", "extra"],
)
def test_a_file_that_is_not_what_its_manifest_says_is_refused(fitted, tmp_path: Path, tamper, message):
    # given a posterior file changed after its manifest was written
    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    tamper(path, arrays)
    # then reading it says what differs
    with pytest.raises(PosteriorFileError, match=message):
        posterior_file.read(path, description, 3, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["arrays"]["inputs"].update(shape=[10**9, 3]), "1 <= m"),
        (lambda d: d["arrays"]["y_mean"].update(shape=[5]), "shape"),
        (lambda d: d.update(inference="magic"), "inference"),
        (lambda d: d["arrays"].pop("y_std"), "lists arrays"),
        (lambda d: d.update(arrays=[]), "an object"),
    ],
    ids=["huge-m", "wrong-shape", "unknown-inference", "missing-array", "not-an-object"],
)
def test_a_manifest_description_that_does_not_fit_the_model_is_refused_before_reading(
    fitted, tmp_path: Path, change, message
):
    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    change(description)
    with pytest.raises(PosteriorFileError, match=message):
        posterior_file.read(path, description, 3, 2)


def test_non_finite_values_are_refused(fitted, tmp_path: Path):
    _, _, inference, arrays = fitted
    broken = {**arrays, "woodbury_vector": np.full_like(arrays["woodbury_vector"], np.nan)}
    path, description = written(tmp_path, broken, inference)
    with pytest.raises(PosteriorFileError, match="not finite"):
        posterior_file.read(path, description, 3, 2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_roundtrips_and_equals_gpy_within_rounding(kernel: str, tmp_path: Path):
    # given a GPy model of each kernel the posterior file covers
    import GPy

    from handler.gp.gpy_model import GPRegressionModel
    from scripts.package_model import rounding_tolerances

    rng = np.random.default_rng(5)
    X = rng.uniform(0, 1, size=(30, 2))
    gp = GPy.models.GPRegression(X, np.sin(6 * X[:, :1]) + X[:, 1:], getattr(GPy.kern, kernel)(2, ARD=True))
    gp.optimize(max_iters=50)
    name, inference, arrays = posterior_arrays(gp)
    path, description = written(tmp_path, arrays, inference)
    served = GPPosterior.from_arrays(name, posterior_file.read(path, description, 2, 1))
    # then the file's predictions equal GPy's within what rounding explains
    X_new = rng.uniform(0, 1, size=(200, 2))
    mean_bound, variance_bound = rounding_tolerances(GPRegressionModel(gp), X_new)
    mean, variance = served.predict(X_new)
    reference_mean, reference_variance = gp.predict(X_new)
    assert np.all(np.abs(mean - reference_mean) <= mean_bound)
    assert np.all(np.abs(variance - reference_variance) <= variance_bound)


@pytest.mark.parametrize("rows", [0, 1, 7, 600])
def test_the_triangular_product_from_numpys_openblas_equals_a_matrix_product(rows: int):
    # given a lower-triangular L and a Fortran-ordered block B
    rng = np.random.default_rng(rows)
    L = np.asfortranarray(np.tril(rng.standard_normal((50, 50))))
    B = np.asfortranarray(rng.standard_normal((50, rows)))
    expected = L @ B
    # then L B (in place where BLAS is at hand) equals numpy's product to rounding: each entry is a sum of <= 50
    # products, so the two orders of summation differ by at most 50 eps |L| |B|
    result = blas.lower_times(L, B)
    assert np.all(np.abs(result - expected) <= 50 * np.finfo(float).eps * (np.abs(L) @ np.abs(B)))


def test_numpys_wheel_carries_the_blas_the_posterior_uses():
    # numpy's manylinux wheels (x86_64 and aarch64) ship scipy-openblas; a missing one would halve exact-model speed
    assert blas.HAS_TRMM


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_file_of_many_duplicate_entries_is_refused_by_its_size_before_it_is_opened(fitted, tmp_path: Path):
    # given a posterior file padded with thousands of copies of one member (each a valid, small entry)
    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    with zipfile.ZipFile(path, "a") as archive:
        for _ in range(2_000):
            archive.writestr("y_std.npy", _npy(arrays["y_std"]))
    # then it is refused for its size: a duplicate could not be told from the real member by name
    with pytest.raises(PosteriorFileError, match="larger than"):
        posterior_file.read(path, description, 3, 2)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_one_duplicate_entry_is_refused_by_the_entry_count(fitted, tmp_path: Path):
    # given a file whose first y_std.npy is another array than its last (readers may take either)
    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("y_std.npy", _npy(-arrays["y_std"]))
    with pytest.raises(PosteriorFileError, match="entries"):
        posterior_file.read(path, description, 3, 2)


def test_a_header_that_declares_a_huge_array_is_refused_before_its_data_is_allocated(fitted, tmp_path: Path):
    # given a y_mean member whose .npy header declares 2e8 values (1.6 GB) but holds none
    import tracemalloc

    _, _, inference, arrays = fitted
    path, description = written(tmp_path, arrays, inference)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (200_000_000,)})
    _rewrite_member(path, "y_mean", header.getvalue())  # numpy writes the magic string with the header
    tracemalloc.start()
    with pytest.raises(PosteriorFileError, match="expected float64"):
        posterior_file.read(path, description, 3, 2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20


def test_finite_numbers_that_overflow_in_predictions_are_refused_at_load(fitted, tmp_path: Path):
    # given a posterior file of finite numbers whose predictions overflow (a lengthscale of 1e-300)
    from handler.gp.artifact import Manifest
    from handler.gp.model import PosteriorModel

    _, kernel, inference, arrays = fitted
    path, description = written(tmp_path, {**arrays, "lengthscale": np.full(3, 1e-300)}, inference)
    manifest = Manifest.parse(
        json.dumps({
            "schema_version": 3, "format": "npz", "model_type": "GPy.models.GPRegression", "artifact": "model.npz",
            "sha256": "0" * 64, "name": "m", "version": "1", "features": ["a", "b", "c"], "outputs": ["y", "z"],
            "bounds": {"a": [-1, 2], "b": [-1, 2], "c": [-1, 2]}, "kernel": {"name": kernel}, "posterior": description,
        }).encode()
    )  # fmt: skip
    # then loading it says so (a 503 at load, not a 500 on every request)
    with pytest.raises(PosteriorFileError, match="not finite"):
        PosteriorModel.load(path, manifest)
