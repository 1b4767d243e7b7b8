"""The model wrapper, its manifest and the lazy loader, on tiny models trained by scripts/train_model.py."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from handler import model as model_module
from handler.model import (
    GPRegressionModel,
    LazyModel,
    ModelManifest,
    ModelUnavailableError,
    load_model,
    manifest_path_for,
    sha256_of,
)
from handler.schemas import FEATURES
from scripts.train_model import park1991, train


def gpy_reference(path: Path, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPy's own predict on a fresh unpickle of the same file, and the prior variance k(x, x) in output units."""
    with path.open("rb") as handle:
        gp = pickle.load(handle)
    mean, variance = gp.predict(X)
    prior = gp.normalizer.inverse_variance(gp.kern.Kdiag(X)) if gp.normalizer is not None else gp.kern.Kdiag(X)
    return mean[:, 0], variance[:, 0], prior


def assert_matches_gpy(mean: np.ndarray, variance: np.ndarray, reference: tuple[np.ndarray, ...]) -> None:
    ref_mean, ref_variance, prior = reference
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-7, atol=0)
    # A variance is a difference of nearly equal numbers: compare on the scale of the prior variance.
    assert np.all(np.abs(variance - ref_variance) <= 1e-11 * prior)


def test_park1991_matches_its_definition_at_the_centre():
    # given the centre of the domain, worked by hand from Park (1991)
    x = np.full((1, 4), 0.5)
    expected = 0.25 * (np.sqrt(1 + 0.75 * 0.5 / 0.25) - 1) + 2.0 * np.exp(1 + np.sin(0.5))
    # then
    assert park1991(x)[0] == pytest.approx(expected, rel=1e-14)


def test_predictions_equal_gpy_predict_on_the_same_pickle(tiny_model_path: Path):
    # given the loaded wrapper and random points, some a little outside the unit cube
    loaded = load_model(tiny_model_path, FEATURES)
    X = np.random.default_rng(1).uniform(-0.1, 1.1, size=(500, 4))
    # when
    mean, variance = loaded.model.predict(X)
    # then
    assert_matches_gpy(mean, variance, gpy_reference(tiny_model_path, X))


def test_chunked_prediction_equals_one_shot_prediction(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    # given chunks much smaller than the batch, with a ragged last chunk
    monkeypatch.setattr(GPRegressionModel, "predict_chunk_size", 7)
    model = GPRegressionModel.load(tiny_model_path)
    X = np.random.default_rng(2).uniform(size=(250, 4))
    # when
    mean, variance = model.predict(X)
    # then
    assert mean.shape == variance.shape == (250,)
    assert_matches_gpy(mean, variance, gpy_reference(tiny_model_path, X))


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
    first = train(tmp_path / "a" / "m.pkl", n_train=25, n_holdout=100, restarts=1, seed=11)
    second = train(tmp_path / "b" / "m.pkl", n_train=25, n_holdout=100, restarts=1, seed=11)
    X = np.random.default_rng(4).uniform(size=(50, 4))
    # then the two models predict the same
    a = GPRegressionModel.load(tmp_path / "a" / "m.pkl").predict(X)
    b = GPRegressionModel.load(tmp_path / "b" / "m.pkl").predict(X)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.variance, b.variance)
    # and the manifest on disk is the one returned, and names the pickle's checksum
    on_disk = ModelManifest.model_validate_json(manifest_path_for(tmp_path / "a" / "m.pkl").read_text())
    assert on_disk == first
    assert first.sha256 == sha256_of(tmp_path / "a" / "m.pkl")
    assert first.holdout == second.holdout
    assert first.features == list(FEATURES)
    assert set(first.versions) == {"python", "numpy", "scipy", "GPy", "paramz"}
    assert len(first.kernel["lengthscale"]) == 4
    assert first.holdout.r2 > 0.7, "even 25 points and one restart learn most of the Park function"


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
        (lambda p: _rewrite_manifest(p, features=["a", "b", "c", "d"], bounds={k: [0, 1] for k in "abcd"}), "features"),
        (lambda p: _rewrite_manifest(p, model_type="sklearn.GaussianProcessRegressor"), "is not supported"),
    ],
    ids=["pickle-missing", "manifest-missing", "truncated", "manifest-garbled", "other-features", "other-type"],
)
def test_a_broken_artifact_is_refused_with_a_clear_reason(model_copy: Path, damage, message: str):
    # given
    damage(model_copy)
    # then
    with pytest.raises(ModelUnavailableError, match=message):
        load_model(model_copy, FEATURES)


def test_another_pickle_with_a_matching_checksum_is_still_refused(model_copy: Path):
    # given a pickle of something else, with the manifest updated to its checksum
    model_copy.write_bytes(pickle.dumps({"not": "a model"}))
    _rewrite_manifest(model_copy, sha256=sha256_of(model_copy))
    # then
    with pytest.raises(ModelUnavailableError, match="could not be read: TypeError"):
        load_model(model_copy, FEATURES)


def test_lazy_model_loads_once_when_threads_race(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch):
    # given a cold loader and a count of real loads
    calls = []
    real_load = model_module.load_model

    def counting_load(*args, **kwargs):
        calls.append(threading.get_ident())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_model", counting_load)
    lazy = LazyModel(tiny_model_path, FEATURES)
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


def test_a_failed_load_is_retried_on_the_next_call(model_copy: Path, tmp_path: Path):
    # given an artifact that is missing at first
    kept = tmp_path / "kept.pkl"
    model_copy.rename(kept)
    lazy = LazyModel(model_copy, FEATURES)
    with pytest.raises(ModelUnavailableError):
        lazy.get()
    assert not lazy.is_loaded
    # when it comes back
    kept.rename(model_copy)
    # then the next call loads it
    assert lazy.get().manifest.features == list(FEATURES)


def test_domain_violations_name_the_row_feature_and_allowed_range(tiny_model_path: Path):
    # given bounds [0, 1] widened by 10%
    loaded = load_model(tiny_model_path, FEATURES)
    X = np.array([[0.5, 0.5, 0.5, 0.5], [1.09, -0.09, 0.5, 0.5], [0.5, 1.2, 0.5, -3.0]])
    # when
    violations = loaded.domain_violations(X, margin=0.1)
    # then only the third row is outside, in two features
    assert [(v.row, v.feature, v.value) for v in violations] == [(2, "x2", 1.2), (2, "x4", -3.0)]
    assert violations[0].low == pytest.approx(-0.1)
    assert violations[0].high == pytest.approx(1.1)
