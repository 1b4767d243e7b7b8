"""The model wrapper and its fast posterior, the manifest and the lazy loader.

Models are trained by scripts/train_model.py in temporary folders.
"""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from handler.api.schemas import ModelManifest
from handler.gp import model as model_module
from handler.gp import posterior as posterior_module
from handler.gp.artifact import Manifest, ModelUnavailableError, PackagedArtifact, manifest_path_for, sha256_of
from handler.gp.gpy_model import GPRegressionModel
from handler.gp.model import LazyModel, load_model
from scripts.train_model import park1991, train
from tests.conftest import DEPLOYED_MODEL, FEATURES, PARK_PICKLE, built_once


def assert_matches_gpy(gp, X: np.ndarray, mean: np.ndarray, variance: np.ndarray, *, latent: bool = False) -> None:
    """Equal to GPy's own predict (or predict_noiseless) to rounding, for every output.

    The mean to 1e-9 of the output scale, the variance to 1e-11 of the prior variance k(x, x): a variance
    is a difference of nearly equal numbers, so a relative comparison would be the wrong yardstick.
    """
    ref_mean, ref_variance = (gp.predict_noiseless if latent else gp.predict)(X)
    ref_variance = np.broadcast_to(ref_variance, ref_mean.shape)  # (n, 1) without a normalizer
    assert mean.shape == variance.shape == ref_mean.shape
    prior = gp.kern.Kdiag(X)[:, None] * (np.asarray(gp.normalizer.std) ** 2 if gp.normalizer is not None else 1.0)
    output_scale = float(np.sqrt(prior.max()))
    assert np.max(np.abs(mean - ref_mean)) <= 1e-9 * output_scale
    assert np.all(np.abs(variance - ref_variance) <= 1e-11 * prior)


@pytest.fixture(scope="module")
def models_of_several_sizes(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Models trained by the repo's script at n = 30 (shared), 150 and 400 training points."""

    def build(folder: Path) -> None:
        for n in (150, 400):
            train(folder / f"model-{n}.pkl", n_train=n, n_holdout=50, restarts=0, seed=n, max_iters=40, gpy_route=True)

    folder = built_once(tmp_path_factory, "models-of-several-sizes", build)
    return {30: tiny_model_path, 150: folder / "model-150.pkl", 400: folder / "model-400.pkl"}


def test_park1991_matches_its_definition_at_the_centre():
    # given the centre of the domain, worked by hand from Park (1991)
    x = np.full((1, 4), 0.5)
    expected = 0.25 * (np.sqrt(1 + 0.75 * 0.5 / 0.25) - 1) + 2.0 * np.exp(1 + np.sin(0.5))
    # then
    assert park1991(x)[0] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("n_train", [30, 150, 400])
@pytest.mark.parametrize("latent", [False, True], ids=["predict", "predict_noiseless"])
def test_the_fast_path_equals_gpy(models_of_several_sizes: dict[int, Path], n_train: int, latent: bool):
    # given a model and random points, some a little outside the unit cube
    model = GPRegressionModel.load(models_of_several_sizes[n_train])
    assert model.posterior is not None, "an RBF GPRegression takes the fast path"
    X = np.random.default_rng(n_train).uniform(-0.1, 1.1, size=(2000, 4))
    # when
    mean, variance = model.predict(X, latent=latent)
    # then
    assert_matches_gpy(model.gp, X, mean, variance, latent=latent)


def test_the_fast_path_equals_gpy_on_the_shipped_model():
    model = GPRegressionModel.load(PARK_PICKLE)
    X = np.random.default_rng(0).uniform(-0.1, 1.1, size=(10_000, 4))
    for latent in (False, True):
        assert_matches_gpy(model.gp, X, *model.predict(X, latent=latent), latent=latent)


def test_chunked_prediction_equals_one_shot_prediction(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    # given chunks of seven rows, with a ragged last chunk
    model = GPRegressionModel.load(tiny_model_path)
    X = np.random.default_rng(2).uniform(size=(250, 4))
    one_shot = model.predict(X)
    monkeypatch.setattr(posterior_module, "CHUNK_BYTES", 7 * 8 * 30)
    assert model.posterior is not None
    assert model.posterior.chunk_rows == 7
    # when
    chunked = model.predict(X)
    # then
    np.testing.assert_allclose(chunked.mean, one_shot.mean, rtol=1e-12)
    np.testing.assert_allclose(chunked.variance, one_shot.variance, rtol=1e-9)


def test_a_kernel_the_fast_path_does_not_cover_falls_back_to_gpy_in_chunks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # given a rational-quadratic model
    import GPy

    X = np.random.default_rng(3).uniform(size=(40, 4))
    gp = GPy.models.GPRegression(X, park1991(X)[:, None], GPy.kern.RatQuad(4, ARD=True))
    calls: list[int] = []
    real_predict = gp.predict

    def counting_predict(X_chunk):
        calls.append(len(X_chunk))
        return real_predict(X_chunk)

    monkeypatch.setattr(gp, "predict", counting_predict)
    monkeypatch.setattr(posterior_module, "CHUNK_BYTES", 64 * 4 * 8 * 40)
    # when
    with caplog.at_level("WARNING"):
        model = GPRegressionModel(gp)
    X_new = np.random.default_rng(4).uniform(size=(150, 4))
    mean, variance = model.predict(X_new)
    # then the reason is logged, the answers are GPy's, and they came in bounded chunks
    assert model.posterior is None
    assert (
        "fast path not available, predicting through GPy: kernel RatQuad is not one of RBF, Exponential, Matern32, "
        "Matern52" in caplog.text
    )
    assert calls == [64, 64, 22]
    assert_matches_gpy(gp, X_new, mean, variance)


@pytest.mark.parametrize("model", [PARK_PICKLE, DEPLOYED_MODEL], ids=["schema-2-pickle", "deployed"])
def test_the_manifest_reader_agrees_with_the_schema(model: Path):
    text = manifest_path_for(model).read_bytes()
    full = ModelManifest.model_validate_json(text)
    read = Manifest.parse(text)
    assert (read.model_type, read.sha256, list(read.features)) == (full.model_type, full.sha256, full.features)
    np.testing.assert_array_equal(read.bounds, list(full.bounds.values()))
    assert read.format == full.format
    # (a schema-2 manifest has no format: it is a pickle's)
    assert full.model_dump(mode="json") == {**read.document, "format": read.format}


def test_save_then_load_round_trips(tiny_model_path: Path, tmp_path: Path):
    # given
    model = GPRegressionModel.load(tiny_model_path)
    X = np.random.default_rng(3).uniform(size=(20, 4))
    # when
    model.save(tmp_path / "copy.pkl")
    again = GPRegressionModel.load(tmp_path / "copy.pkl")
    # then
    np.testing.assert_array_equal(again.predict(X).mean, model.predict(X).mean)
    assert not list(tmp_path.glob(".copy.pkl.*")), "no temporary file is left behind"


def test_training_is_deterministic_and_the_manifest_describes_the_artifact(tmp_path: Path):
    # given the same seed twice
    first, artifact = train(tmp_path / "a" / "m.npz", n_train=25, n_holdout=100, restarts=1, seed=11)
    second, _ = train(tmp_path / "b" / "m.npz", n_train=25, n_holdout=100, restarts=1, seed=11)
    X = np.random.default_rng(4).uniform(size=(50, 4))
    # then the two models predict the same (on one machine: bit for bit)
    a = load_model(PackagedArtifact(tmp_path / "a" / "m.npz")).model.predict(X)
    b = load_model(PackagedArtifact(tmp_path / "b" / "m.npz")).model.predict(X)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.variance, b.variance)
    # and the manifest on disk is the one returned, and names the posterior file's checksum
    on_disk = ModelManifest.model_validate_json(manifest_path_for(artifact).read_text())
    assert on_disk == first
    assert (first.format, artifact.name) == ("npz", "m.npz")
    assert first.sha256 == sha256_of(artifact)
    assert first.holdout == second.holdout
    assert first.features == list(FEATURES)
    assert first.outputs == ["y"]
    assert set(first.versions) == {"python", "numpy", "scipy", "GPy", "paramz"}
    assert len(first.kernel["lengthscale"]) == 4
    assert first.holdout is not None
    assert first.holdout["y"].r2 > 0.7, "even 25 points and one restart learn most of the Park function"


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest_path = manifest_path_for(path)
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: manifest_path_for(p).unlink(), "manifest pretrained-model.manifest.json is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "does not match its manifest checksum"),
        (lambda p: manifest_path_for(p).write_text("{not json"), "is invalid"),
        (lambda p: _rewrite_manifest(p, features=["a", "b", "c"], bounds={k: [0, 1] for k in "abc"}), "takes 4 inputs"),
        (lambda p: _rewrite_manifest(p, outputs=["y", "z"]), "has 1 outputs but its manifest lists 2"),
        (lambda p: _rewrite_manifest(p, schema_version=1), "schema_version is 1, expected 3"),
        (lambda p: _rewrite_manifest(p, model_type="sklearn.GaussianProcessRegressor"), "is not supported"),
    ],
    ids=[
        "pickle-missing",
        "manifest-missing",
        "truncated",
        "manifest-garbled",
        "fewer-features",
        "more-outputs",
        "old-schema",
        "other-type",
    ],
)
def test_a_broken_artifact_is_refused_with_a_clear_reason(model_copy: Path, damage, message: str):
    # given
    damage(model_copy)
    # then
    with pytest.raises(ModelUnavailableError, match=message):
        load_model(PackagedArtifact(model_copy))


def test_another_pickle_with_a_matching_checksum_is_still_refused(model_copy: Path):
    # given a pickle of something else, with the manifest updated to its checksum
    model_copy.write_bytes(pickle.dumps({"not": "a model"}))
    _rewrite_manifest(model_copy, sha256=sha256_of(model_copy))
    # then
    with pytest.raises(ModelUnavailableError, match="could not be read: TypeError"):
        load_model(PackagedArtifact(model_copy))


def test_lazy_model_loads_once_when_threads_race(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    # given a cold loader and a count of real loads
    calls = []
    real_load = model_module.load_model

    def counting_load(*args, **kwargs):
        calls.append(threading.get_ident())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_model", counting_load)
    lazy = LazyModel(PackagedArtifact(tiny_model_path))
    barrier = threading.Barrier(8)
    results = []

    def ask() -> None:
        barrier.wait()
        results.append(lazy.get())

    # when eight threads ask at once
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then one load served them all
    assert len(calls) == 1
    assert len(results) == 8
    assert all(result is results[0] for result in results)
    assert lazy.is_loaded


def test_a_failed_load_is_retried_at_most_once_per_interval(model_copy: Path, tmp_path: Path):
    # given an artifact that is missing at first, and a clock we move by hand
    now = [100.0]
    source = PackagedArtifact(model_copy)
    attempts = []
    real_fetch = source.fetch_manifest

    def counting_fetch():
        attempts.append(now[0])
        return real_fetch()

    object.__setattr__(source, "fetch_manifest", counting_fetch)
    kept = tmp_path / "kept.pkl"
    model_copy.rename(kept)
    lazy = LazyModel(source, retry_interval_s=5.0, clock=lambda: now[0])
    with pytest.raises(ModelUnavailableError, match="is missing"):
        lazy.get()
    # when the artifact comes back within the interval
    kept.rename(model_copy)
    now[0] += 4.9
    # then callers get the same failure without another attempt
    with pytest.raises(ModelUnavailableError, match="is missing"):
        lazy.get()
    assert attempts == [100.0]
    assert not lazy.is_loaded
    # and once the interval is over, the next call loads it
    now[0] += 0.2
    assert lazy.get().manifest.features == FEATURES
    assert len(attempts) == 2


def test_a_library_version_other_than_the_manifests_is_logged(model_copy: Path, caplog: pytest.LogCaptureFixture):
    # given a manifest written with another numpy
    _rewrite_manifest(model_copy, versions={**json.loads(manifest_path_for(model_copy).read_text())["versions"],
                                            "numpy": "1.26.4"})  # fmt: skip
    # when
    with caplog.at_level("WARNING"):
        load_model(PackagedArtifact(model_copy))
    # then
    [record] = [r for r in caplog.records if r.getMessage() == "library versions differ from the manifest's"]
    assert record.versions["numpy"]["manifest"] == "1.26.4"
    assert set(record.versions) == {"numpy"}, "the others match"


def test_domain_violations_name_the_row_feature_and_allowed_range(tiny_model_path: Path):
    # given bounds [0, 1] widened by 10%
    loaded = load_model(PackagedArtifact(tiny_model_path))
    X = np.array([[0.5, 0.5, 0.5, 0.5], [1.09, -0.09, 0.5, 0.5], [0.5, 1.2, 0.5, -3.0]])
    # when
    violations = loaded.manifest.domain_violations(X, margin=0.1)
    # then only the third row is outside, in two features
    assert [(v.row, v.feature, v.value) for v in violations] == [(2, "x2", 1.2), (2, "x4", -3.0)]
    assert violations[0].low == pytest.approx(-0.1)
    assert violations[0].high == pytest.approx(1.1)


@pytest.mark.parametrize("name", ["x1\n", "x1\r\n", "\nx1", "x 1", ""])
def test_a_name_with_a_newline_or_space_is_not_a_name(name):
    from handler.gp.artifact import check_name

    with pytest.raises(ValueError, match="must start with a letter"):
        check_name(name)
    assert check_name("x1") == "x1"
