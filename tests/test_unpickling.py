"""The restricted unpickler: every supported model loads; a pickle reaching for anything else is refused first."""

from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from handler.artifact import PackagedArtifact, RestrictedUnpickler, UnsafePickleError, manifest_path_for, sha256_of
from handler.model import LazyModel, wrap_gpy_model
from handler.posterior import KERNELS
from tests.conftest import SHIPPED_MODEL
from tests.events import api_event, lambda_context, response_json
from tests.test_posterior import make_gp


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data)).load()


def supported_models():
    """Every model type, kernel, normaliser and likelihood the service supports, and the GPy-only ones."""
    import GPy

    for kernel, sparse, normalize in itertools.product(KERNELS, [False, True], [False, True]):
        yield (
            f"{kernel}-{'sparse' if sparse else 'exact'}-{'norm' if normalize else 'raw'}",
            make_gp(kernel, ard=True, normalize=normalize, outputs=2, sparse=sparse, n=30),
        )
    X = np.random.default_rng(0).uniform(size=(20, 3))
    yield "sum-kernel", GPy.models.GPRegression(X, X[:, :1], GPy.kern.RBF(3) + GPy.kern.Linear(3))
    yield "product-kernel", GPy.models.GPRegression(X, X[:, :1], GPy.kern.RBF(3) * GPy.kern.Matern32(3))
    yield "student-t", GPy.core.GP(
        X, X[:, :1], GPy.kern.RBF(3), GPy.likelihoods.StudentT(),
        inference_method=GPy.inference.latent_function_inference.Laplace(),
    )  # fmt: skip


MODELS = dict(supported_models())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_every_supported_model_loads_and_predicts_as_the_original(name: str, protocol: int):
    gp = MODELS[name]
    loaded = restricted_loads(pickle.dumps(gp, protocol=protocol))
    X = np.random.default_rng(1).uniform(size=(7, gp.input_dim))
    np.testing.assert_array_equal(wrap_gpy_model(loaded).predict(X).mean, wrap_gpy_model(gp).predict(X).mean)


def test_the_shipped_artifact_loads():
    assert restricted_loads(SHIPPED_MODEL.read_bytes()).input_dim == 4


class Reaching:
    """A pickle whose loading calls `target(*args)`."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _runstring():
    from numpy.testing._private.utils import runstring

    return runstring


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda marker: Reaching(os.system, f"touch {marker}"), "posix.system"),
        (lambda marker: Reaching(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        (lambda marker: Reaching(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        (lambda marker: Reaching(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        (lambda marker: Reaching(__import__("importlib").import_module, "antigravity"), "importlib.import_module"),
        (lambda marker: Reaching(getattr, "text", "upper"), "builtins.getattr"),
        (lambda marker: Reaching(_runstring(), f"open({str(marker)!r}, 'w')", {}), "runstring"),
        (lambda marker: Reaching(shutil.rmtree, str(marker)), "shutil.rmtree"),
        (lambda marker: Reaching(np.save, str(marker), np.zeros(1)), "numpy.save"),
    ],
    ids=["os.system", "subprocess", "eval", "exec", "importlib", "getattr", "numpy-runstring", "shutil", "numpy.save"],
)
def test_a_pickle_reaching_for_anything_else_is_refused_before_it_runs(tmp_path: Path, make, refused: str):
    # given a pickle that would create a file when loaded
    marker = tmp_path / "ran"
    data = pickle.dumps(make(marker))
    # when
    with pytest.raises(UnsafePickleError) as caught:
        restricted_loads(data)
    # then it is refused by name, and nothing ran
    assert refused in caught.value.name
    assert not marker.exists()


def test_a_gpy_function_is_refused_though_gpy_classes_are_admitted():
    from GPy.util.linalg import jitchol

    with pytest.raises(UnsafePickleError, match=r"GPy\.util\.linalg\.jitchol"):
        restricted_loads(pickle.dumps(Reaching(jitchol, np.eye(2))))


class TrojanModel:
    """The variant that runs its payload, then hands back the real model so that the service answers 200."""

    def __init__(self, gp, marker: Path) -> None:
        self.gp, self.marker = gp, marker

    def __reduce__(self):
        return eval, (
            f"open({str(self.marker)!r}, 'w') and None or __import__('pickle').loads({pickle.dumps(self.gp)!r})",
        )


def test_a_trojan_artifact_with_a_matching_checksum_gets_503_with_the_refused_name_logged(
    monkeypatch: pytest.MonkeyPatch, model_copy: Path, tmp_path: Path
):
    # given whoever can write the artifact and its manifest replaced the pickle and updated the checksum
    import json

    from handler import app

    marker = tmp_path / "payload-ran"
    real = pickle.loads(model_copy.read_bytes())
    model_copy.write_bytes(pickle.dumps(TrojanModel(real, marker)))
    manifest = json.loads(manifest_path_for(model_copy).read_text())
    manifest_path_for(model_copy).write_text(json.dumps({**manifest, "sha256": sha256_of(model_copy)}))
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("handler.model").addHandler(collector)
    # when
    try:
        response = app.lambda_handler(api_event(body={"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}), lambda_context())
    finally:
        logging.getLogger("handler.model").removeHandler(collector)
    # then
    assert response["statusCode"] == 503
    assert "references builtins.eval" in response_json(response)["details"][0]["message"]
    assert not marker.exists(), "the payload never ran"
    # and the log names the refused global
    [refusal] = [record for record in records if record.getMessage() == "model artifact refused"]
    assert (refusal.levelname, refusal.refused_global) == ("ERROR", "builtins.eval")
