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
from handler.gp.artifact import manifest_path_for
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


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("rows", [0, 1, 7, 600])
def test_the_triangular_solves_from_numpys_openblas_equal_lapacks(rows: int, order: str):
    # given a lower-triangular L of a positive-definite matrix, in either order, and a Fortran-ordered block B
    from scipy.linalg import solve_triangular

    rng = np.random.default_rng(rows)
    A = rng.standard_normal((50, 50))
    L = np.asarray(np.linalg.cholesky(A @ A.T + 50 * np.eye(50)), order=order)
    B = rng.standard_normal((50, rows))
    # then L^-1 B and L^-T B (in place) are LAPACK's to the solves' backward error: each is the exact solution
    # for L + E with |E| <= 50 eps |L| / 2, so two solutions X differ by at most 50 eps |L^-1| |L| |X|
    for transposed, solve in ((False, blas.lower_solve), (True, blas.lower_transpose_solve)):
        expected = solve_triangular(L, B, lower=True, trans="T" if transposed else "N")
        op = L.T if transposed else L
        inverse = np.abs(np.linalg.inv(op))
        result = solve(L, np.asfortranarray(B))
        assert np.all(np.abs(result - expected) <= 50 * np.finfo(float).eps * (inverse @ np.abs(op) @ np.abs(expected)))


def test_numpys_wheel_carries_the_blas_the_posterior_uses():
    # numpy's manylinux wheels (x86_64 and aarch64) ship scipy-openblas; a missing one would halve exact-model speed
    assert blas.HAS_TRMM
    assert blas.HAS_TRSM


def test_a_file_written_before_the_factor_was_stored_is_served_as_before_with_a_warning(fitted, tmp_path, caplog):
    # given an exact model's posterior file as written before: the inverse of the Cholesky factor, not the factor
    from handler.gp.artifact import Manifest
    from handler.gp.model import PosteriorModel

    gp, kernel, inference, arrays = fitted
    if inference != "exact":
        pytest.skip("sparse files did not change")
    inverse = np.linalg.solve(arrays["cholesky"], np.eye(len(arrays["cholesky"])))
    legacy = {**{k: v for k, v in arrays.items() if k != "cholesky"}, "cholesky_inverse": inverse}
    path, description = written(tmp_path, legacy, inference)
    manifest = Manifest.parse(json.dumps(_manifest(kernel, description)).encode())
    # when it is loaded
    with caplog.at_level("WARNING"):
        model = PosteriorModel.load(path, manifest)
    # then it is, the log says that repackaging improves it, and it predicts as GPy does to rounding
    assert model.posterior.variance_member == "cholesky_inverse"
    assert "repackaging it" in caplog.text
    from handler.gp.gpy_model import GPRegressionModel
    from scripts.package_model import rounding_tolerances

    served_as_gpy = GPRegressionModel(gp)
    served_as_gpy.posterior = model.posterior  # the bound for the inverse's path
    X = np.random.default_rng(4).uniform(-1, 2, size=(300, 3))
    mean_bound, variance_bound = rounding_tolerances(served_as_gpy, X)
    mean, variance = model.predict(X)
    reference_mean, reference_variance = gp.predict(X)
    assert np.all(np.abs(mean - reference_mean) <= mean_bound)
    assert np.all(np.abs(variance - reference_variance) <= variance_bound)


def _manifest(kernel: str, description: dict, features: int = 3, outputs: int = 2, **changes) -> dict:
    names = [f"x{i}" for i in range(features)]
    return {
        "schema_version": 3, "format": "npz", "model_type": "GPy.models.GPRegression", "artifact": "model.npz",
        "sha256": "0" * 64, "name": "m", "version": "1", "features": names,
        "outputs": [f"y{j}" for j in range(outputs)], "bounds": {n: [-1, 2] for n in names}, "kernel": {"name": kernel},
        "posterior": description, **changes,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda L: L + np.triu(np.full_like(L, 1e-300), 1), "lower triangular"),
        (lambda L: L - 2 * np.diag(np.diag(L)), "diagonal must be positive"),
    ],
    ids=["upper-triangle", "negative-diagonal"],
)
def test_a_cholesky_factor_that_is_not_one_is_refused(fitted, tmp_path: Path, change, message):
    _, _, inference, arrays = fitted
    if inference != "exact":
        pytest.skip("sparse files hold no Cholesky factor")
    path, description = written(tmp_path, {**arrays, "cholesky": change(arrays["cholesky"])}, inference)
    with pytest.raises(PosteriorFileError, match=message):
        posterior_file.read(path, description, 3, 2)


def _hostile_file(folder: Path, features: int, m: int, kernel: str = "RBF") -> Path:
    """A file whose manifest declares m inputs of `features` features and the (m, m) factor, with the inputs'
    and the woodbury vector's data present but a factor member of its header alone: every sha256 true but the
    factor's, the file's own sha256 true (what the function checks before it opens the file)."""
    import hashlib

    rng = np.random.default_rng(0)
    arrays = {
        "inputs": rng.uniform(size=(m, features)) if features * m <= 40_000 else np.zeros((1, 1)),
        "lengthscale": np.ones(features), "kernel_variance": np.asarray(1.0), "noise_variance": np.asarray(1e-4),
        "woodbury_vector": rng.normal(size=(m, 1)), "y_mean": np.zeros(1), "y_std": np.ones(1),
    }  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = folder / "model.npz"
    path.write_bytes(buffer.getvalue())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (m, m)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("cholesky.npy", header.getvalue())
    listed = {name: {"shape": [m, features], "sha256": "0" * 64} for name in ("inputs",)}
    listed |= {name: {"shape": list(a.shape), "sha256": posterior_file.array_sha256(a)} for name, a in arrays.items()}
    listed["inputs"] = {"shape": [m, features], "sha256": posterior_file.array_sha256(arrays["inputs"])}
    listed["cholesky"] = {"shape": [m, m], "sha256": "0" * 64}
    manifest = _manifest(kernel, {"inference": "exact", "arrays": listed}, features, 1, artifact=path.name)
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path_for(path).write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    ("features", "m", "reason"),
    [(20_000, 8_000, "more than the"), (4, 8_000, "fewer bytes")],
    ids=["20000-features-at-m-8000", "empty-factor-at-the-cap"],
)
def test_a_hostile_file_is_refused_in_memory_far_below_what_it_declares_twice_in_a_row(
    tmp_path: Path, features: int, m: int, reason: str, caplog
):
    # given a file of a few hundred KB (or 2 KB) whose manifest declares hundreds of MB of arrays, the function's
    # lazy model on it, and a caller who retries at once
    import tracemalloc

    from handler.gp import artifact
    from handler.gp.artifact import ModelUnavailableError, PackagedArtifact
    from handler.gp.model import LazyModel

    path = _hostile_file(tmp_path, features, m)
    lazy = LazyModel(PackagedArtifact(path), retry_interval_s=0.0)
    lazy.manifest()  # the manifest itself may be ~600 KB: read before counting
    tracemalloc.start()
    try:
        for attempt in range(2):
            # when the model is loaded
            with pytest.raises(ModelUnavailableError) as raised:
                lazy.get()
            message = str(raised.value)
            del raised  # as the function does once the 503 is answered
            # then it is refused for the reason, and neither the attempt nor the failure it remembers holds memory
            # anywhere near the declared size (8 m^2 = 512 MB, or 1.3 GB of inputs): the attempt's peak is the
            # 8 MiB block the file is hashed in
            assert reason in message, (attempt, message)
            current, peak = tracemalloc.get_traced_memory()
            assert peak < artifact.DOWNLOAD_CHUNK_BYTES + 2 * 2**20, (attempt, peak)
            assert current < 1 * 2**20, (attempt, current)
            tracemalloc.reset_peak()
    finally:
        tracemalloc.stop()


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
