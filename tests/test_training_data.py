"""Publishing the training points: packaged with --publish-training-data, served by GET /model/training-data.

A model's training points are its owner's: nothing is served unless the manifest says so, and then only what it
says (the inputs, or the inputs and their outputs).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from handler.gp import posterior_file
from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import LazyModel
from scripts import package_model
from tests.conftest import PLANT_BOUNDS, PLANT_FEATURES, PLANT_OUTPUTS, built_once
from tests.events import api_event, lambda_context, response_json
from tests.test_contract import _validator

ROUTE = "/model/training-data"


def package_plant(pickle_path: Path, output: Path, publish: str) -> None:
    status = package_model.main(
        [
            str(pickle_path),
            "--features", ",".join(PLANT_FEATURES), "--outputs", ",".join(PLANT_OUTPUTS),
            "--bounds", ",".join(f"{k}={lo:g}:{hi:g}" for k, (lo, hi) in PLANT_BOUNDS.items()),
            "--name", "plant", "--publish-training-data", publish, "--output", str(output),
        ]
    )  # fmt: skip
    assert status == 0


@pytest.fixture(scope="module")
def published_plant(plant_pickle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plant model packaged twice: publishing its inputs and outputs, and its inputs only."""

    def build(folder: Path) -> None:
        for publish in ("inputs_and_outputs", "inputs"):
            package_plant(plant_pickle_path, folder / publish / "plant.npz", publish)

    folder = built_once(tmp_path_factory, "published-plant", build)
    return {publish: folder / publish / "plant.npz" for publish in ("inputs_and_outputs", "inputs")}


@pytest.fixture(scope="module")
def plant_gp(plant_pickle_path: Path):
    with plant_pickle_path.open("rb") as handle:
        return pickle.load(handle)


def serving(monkeypatch: pytest.MonkeyPatch, model_path: Path):
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_path)))
    return app


def get(app, path: str = ROUTE) -> tuple[int, dict]:
    response = app.lambda_handler(api_event("GET", path), lambda_context())
    return response["statusCode"], response_json(response)


def test_a_model_packaged_with_its_training_data_serves_the_points_gpy_was_fitted_on(
    monkeypatch, published_plant, plant_gp
):
    # given the plant model packaged with --publish-training-data inputs_and_outputs
    app = serving(monkeypatch, published_plant["inputs_and_outputs"])
    # when
    status, body = get(app)
    # then the points are GPy's own X and (not normalised) Y, as columns named by the manifest, bit for bit
    assert status == 200
    assert body["published"] == "inputs_and_outputs"
    assert body["n_points"] == len(plant_gp.X) == 60
    assert list(body["inputs"]) == list(PLANT_FEATURES)
    assert list(body["outputs"]) == list(PLANT_OUTPUTS)
    np.testing.assert_array_equal(np.column_stack([body["inputs"][f] for f in PLANT_FEATURES]), plant_gp.X)
    np.testing.assert_array_equal(np.column_stack([body["outputs"][o] for o in PLANT_OUTPUTS]), plant_gp.Y)
    # and GET /model says what is published
    assert get(app, "/model")[1]["published_training_data"] == "inputs_and_outputs"


def test_publishing_the_inputs_only_leaves_the_outputs_out_of_the_file_and_the_answer(
    monkeypatch, published_plant, plant_gp
):
    path = published_plant["inputs"]
    manifest = json.loads(manifest_path_for(path).read_text())
    assert "training_inputs" in manifest["posterior"]["arrays"]
    assert "training_outputs" not in manifest["posterior"]["arrays"]
    with np.load(path) as arrays:
        assert "training_outputs.npy" not in arrays.zip.namelist()
    status, body = get(serving(monkeypatch, path))
    assert status == 200
    assert (body["published"], body["outputs"]) == ("inputs", None)
    np.testing.assert_array_equal(np.column_stack([body["inputs"][f] for f in PLANT_FEATURES]), plant_gp.X)


def test_a_model_that_publishes_nothing_answers_404_saying_how_to_publish(plant_app):
    status, body = get(plant_app)
    assert status == 404
    assert body["error"] == "training data not published"
    assert body["details"][0]["field"] == "path"
    assert "--publish-training-data" in body["details"][0]["message"]


def test_a_model_served_through_gpy_publishes_from_its_pickle(app_with_model, tiny_model_path: Path):
    # given the tiny model, a pickle packaged publishing its inputs
    with tiny_model_path.open("rb") as handle:
        gp = pickle.load(handle)
    status, body = get(app_with_model)
    assert status == 200
    assert (body["published"], body["outputs"], body["n_points"]) == ("inputs", None, 30)
    np.testing.assert_array_equal(np.column_stack(list(body["inputs"].values())), gp.X)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ({"published_training_data": "inputs_and_outputs"}, "which the artifact does not hold"),
        ({"published_training_data": "everything"}, "published_training_data must be one of"),
    ],
    ids=["more-than-the-file-holds", "unknown-choice"],
)
def test_a_manifest_publishing_what_its_file_does_not_hold_is_refused_at_load_and_logged(
    monkeypatch, published_plant, tmp_path: Path, caplog, edit: dict, reason: str
):
    # given the inputs-only artifact whose manifest was edited afterwards
    source = published_plant["inputs"]
    target = tmp_path / source.name
    shutil.copy(source, target)
    manifest = {**json.loads(manifest_path_for(source).read_text()), **edit}
    manifest_path_for(target).write_text(json.dumps(manifest))
    app = serving(monkeypatch, target)
    # when
    with caplog.at_level(logging.ERROR):
        status, body = get(app)
    # then a 503 that does not quote the artifact, the reason in the log
    assert status == 503
    assert reason not in json.dumps(body)
    assert reason in caplog.text


def test_the_posterior_file_refuses_a_declared_training_size_beyond_what_one_answer_carries():
    # given a manifest declaring more training points than GET /model/training-data may answer (d = 3, p = 2)
    arrays = {
        name: {"shape": shape, "sha256": "0" * 64}
        for name, shape in {
            "inputs": [10, 3], "lengthscale": [3], "kernel_variance": [], "noise_variance": [],
            "woodbury_vector": [10, 2], "y_mean": [2], "y_std": [2], "cholesky_inverse": [10, 10],
            "training_inputs": [posterior_file.MAX_PUBLISHED_VALUES // 5 + 1, 3],
            "training_outputs": [posterior_file.MAX_PUBLISHED_VALUES // 5 + 1, 2],
        }.items()
    }  # fmt: skip
    description = {"inference": "exact", "arrays": arrays}
    # then its shapes are refused, before any file is opened
    with pytest.raises(posterior_file.PosteriorFileError, match="more than 200000 published values"):
        posterior_file.expected_shapes(description, 3, 2)
    # and outputs without inputs are refused too
    del arrays["training_inputs"]
    with pytest.raises(posterior_file.PosteriorFileError, match="training_outputs come with training_inputs"):
        posterior_file.expected_shapes(description, 3, 2)


def test_packaging_refuses_to_publish_more_than_one_answer_carries(
    monkeypatch, plant_pickle_path: Path, tmp_path: Path, capsys
):
    # given a limit below the plant model's 60 points x (3 features + 2 outputs)
    monkeypatch.setattr(posterior_file, "MAX_PUBLISHED_VALUES", 299)
    output = tmp_path / "plant.npz"
    # when
    status = package_model.main(
        [str(plant_pickle_path), "--features", ",".join(PLANT_FEATURES), "--outputs", ",".join(PLANT_OUTPUTS),
         "--publish-training-data", "inputs_and_outputs", "--output", str(output)]
    )  # fmt: skip
    # then one line says why, and nothing is written
    assert status == 2
    assert "60 points make 300 values, more than the 299" in capsys.readouterr().err
    assert not output.exists()


def test_repackaging_keeps_the_previous_choice_unless_told_otherwise():
    assert package_model.published_training_data(None, {"published_training_data": "inputs"}) == "inputs"
    assert package_model.published_training_data("none", {"published_training_data": "inputs"}) is None
    assert package_model.published_training_data("inputs_and_outputs", {}) == "inputs_and_outputs"
    assert package_model.published_training_data(None, {}) is None


def test_the_answers_conform_to_the_documented_schema(monkeypatch, published_plant, plant_model_path: Path):
    cases = [(published_plant["inputs_and_outputs"], 200), (published_plant["inputs"], 200), (plant_model_path, 404)]
    for path, expected in cases:
        app = serving(monkeypatch, path)
        spec = json.loads(app.lambda_handler(api_event("GET", "/openapi.json"), lambda_context())["body"])
        status, body = get(app)
        assert status == expected
        _validator(spec, ROUTE, "get", status).validate(body)


def test_training_points_that_cannot_be_read_make_the_model_unavailable_not_a_500(monkeypatch, published_plant):
    # given a model whose points raise when read (a pickle's X and Y are whatever it built)
    from handler.gp.model import PosteriorModel

    def unreadable(self):
        raise ValueError("not an array")

    monkeypatch.setattr(PosteriorModel, "training_data", unreadable)
    # then the route is a 503, as for any artifact that does not load
    status, body = get(serving(monkeypatch, published_plant["inputs"]))
    assert status == 503
    assert "not an array" not in json.dumps(body)
