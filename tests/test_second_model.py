"""The whole API against a second, different model: other feature names and bounds, two outputs, a Matern kernel.

Nothing in handler/ names a feature or an output: everything here comes from the plant model's manifest.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from handler.gp.artifact import manifest_path_for
from tests.conftest import PLANT_BOUNDS, PLANT_FEATURES, PLANT_OUTPUTS, ROOT, plant
from tests.events import api_event, lambda_context, response_json
from tests.test_fuzz_http import EXCLUDED_CHECKS, MODEL_ROUTE_COPIES

POINT = {"temperature": 320.0, "pressure": 5.0, "flow_rate": 0.7}


def call(app, event):
    response = app.lambda_handler(event, lambda_context())
    return response["statusCode"], response_json(response)


def gpy_predict(path: Path, points: list[dict[str, float]], latent: bool = False) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as handle:
        gp = pickle.load(handle)
    X = np.array([[p[name] for name in PLANT_FEATURES] for p in points])
    mean, variance = (gp.predict_noiseless if latent else gp.predict)(X)
    return mean, np.broadcast_to(variance, mean.shape)


def points(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{k: float(rng.uniform(lo, hi)) for k, (lo, hi) in PLANT_BOUNDS.items()} for _ in range(n)]


def test_a_point_is_answered_with_each_output_named(plant_app, plant_pickle_path: Path):
    # when
    status, body = call(plant_app, api_event(body=POINT))
    # then
    assert status == 200
    assert list(body) == list(PLANT_OUTPUTS)
    mean, variance = gpy_predict(plant_pickle_path, [POINT])
    for j, output in enumerate(PLANT_OUTPUTS):
        assert body[output] == {"mean": pytest.approx(mean[0, j], rel=1e-9), "variance": pytest.approx(variance[0, j])}
    # and the model is close to the function it learnt
    truth = plant(np.array([[POINT[k] for k in PLANT_FEATURES]]))[0]
    assert body["conversion"]["mean"] == pytest.approx(truth[0], rel=0.01)
    assert body["purity"]["mean"] == pytest.approx(truth[1], rel=0.001)


def test_rows_and_columns_answer_each_output_in_order(plant_app, plant_pickle_path: Path):
    # given
    rows = points(30)
    columns = {name: [row[name] for row in rows] for name in PLANT_FEATURES}
    # when
    status, by_rows = call(plant_app, api_event(body=rows))
    _, by_columns = call(plant_app, api_event(body=columns))
    # then
    assert status == 200
    mean, variance = gpy_predict(plant_pickle_path, rows)
    for j, output in enumerate(PLANT_OUTPUTS):
        np.testing.assert_allclose([r[output]["mean"] for r in by_rows], mean[:, j], rtol=1e-9)
        np.testing.assert_allclose([r[output]["variance"] for r in by_rows], variance[:, j], rtol=1e-6)
        assert by_columns[output] == {
            "mean": [r[output]["mean"] for r in by_rows],
            "variance": [r[output]["variance"] for r in by_rows],
        }


def test_options_apply_to_every_output(plant_app, plant_pickle_path: Path):
    event = api_event(body=POINT)
    event["queryStringParameters"] = {"variance": "latent", "include": "std,interval"}
    status, body = call(plant_app, event)
    assert status == 200
    _, latent = gpy_predict(plant_pickle_path, [POINT], latent=True)
    for j, output in enumerate(PLANT_OUTPUTS):
        answer = body[output]
        assert set(answer) == {"mean", "variance", "std", "lower_95", "upper_95"}
        assert answer["variance"] == pytest.approx(latent[0, j], rel=1e-6)
        assert answer["upper_95"] - answer["lower_95"] == pytest.approx(2 * 1.959964 * answer["std"])


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"temperature": 300, "pressure": 2}, "flow_rate", "Field required"),
        ({**POINT, "x1": 0.5}, "x1", "Extra inputs are not permitted"),
        ({**POINT, "pressure": "high"}, "pressure", 'got string "high"'),
        ({**POINT, "temperature": 900.0}, "temperature", "outside the allowed range [235, 415]"),
        ([POINT, {**POINT, "flow_rate": None}], "[1].flow_rate", "got null"),
        ({"temperature": [300.0, 310.0], "pressure": [2.0], "flow_rate": [1.0, 1.0]}, "body", "same length"),
    ],
    ids=["missing", "unknown", "string", "outside-domain", "null-in-batch", "unequal-columns"],
)
def test_refusals_name_the_models_own_features(plant_app, body, field: str, message: str):
    status, answer = call(plant_app, api_event(body=body))
    assert status == 422
    assert answer["details"][0]["field"] == field
    assert message in answer["details"][0]["message"]


def test_model_route_and_openapi_describe_this_model(plant_app, plant_model_path: Path):
    # when
    _, manifest = call(plant_app, api_event("GET", "/model"))
    _, spec = call(plant_app, api_event("GET", "/openapi.json"))
    # then /model has the name, version, features, outputs, bounds and accuracy
    assert manifest.pop("limits")["max_batch_size"] == 10_000
    assert manifest == json.loads(manifest_path_for(plant_model_path).read_text())
    assert (manifest["name"], manifest["version"]) == ("plant", "2026.11")
    assert manifest["features"] == list(PLANT_FEATURES)
    assert manifest["outputs"] == list(PLANT_OUTPUTS)
    assert manifest["bounds"] == {k: list(v) for k, v in PLANT_BOUNDS.items()}
    assert manifest["kernel"]["name"] == "Matern52"
    assert set(manifest["holdout"]) == set(PLANT_OUTPUTS)
    assert manifest["holdout"]["conversion"]["r2"] > 0.99
    assert manifest["holdout"]["purity"]["r2"] > 0.999
    # and the OpenAPI document names the features, their ranges, examples inside the bounds and each output
    schemas = spec["components"]["schemas"]
    assert list(schemas["PredictPoint"]["properties"]) == list(PLANT_FEATURES)
    assert schemas["PredictPoint"]["properties"]["pressure"]["minimum"] == pytest.approx(0.1)
    assert schemas["PredictPoint"]["properties"]["pressure"]["maximum"] == pytest.approx(10.9)
    example = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["examples"]["point"]
    assert example["value"] == {"temperature": 325.0, "pressure": 5.5, "flow_rate": 1.05}
    assert list(schemas["Predictions"]["properties"]) == list(PLANT_OUTPUTS)
    assert list(schemas["ColumnarPredictions"]["properties"]) == list(PLANT_OUTPUTS)
    assert spec["info"]["title"] == "plant surrogate API"


def test_sample_events_follow_the_manifest(plant_model_path: Path, tmp_path: Path):
    from handler.gp.artifact import PackagedArtifact
    from scripts.generate_events import cases

    generated = cases(PackagedArtifact(plant_model_path).fetch_manifest())
    assert json.loads(generated["predict"][2] or "") == {"temperature": 325.0, "pressure": 5.5, "flow_rate": 1.05}
    assert "flow_rate" not in json.loads(generated["bad-missing-field"][2] or "")


@pytest.mark.slow
def test_the_local_server_answers_over_http(plant_server, plant_pickle_path: Path):
    base_url, _ = plant_server
    rows = points(5, seed=3)
    single = httpx.post(f"{base_url}/predict", json=rows[0], timeout=60)
    batch = httpx.post(f"{base_url}/predict", json=rows, timeout=60)
    refused = httpx.post(f"{base_url}/predict", json={**rows[0], "pressure": True}, timeout=60)
    assert single.status_code == batch.status_code == 200
    mean, _ = gpy_predict(plant_pickle_path, rows)
    assert single.json()["conversion"]["mean"] == pytest.approx(mean[0, 0], rel=1e-9)
    assert [r["purity"]["mean"] for r in batch.json()] == pytest.approx(mean[:, 1].tolist(), rel=1e-9)
    assert refused.status_code == 422
    assert refused.json()["details"][0]["field"] == "pressure"
    assert httpx.get(f"{base_url}/model", timeout=60).json()["name"] == "plant"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failures_against_the_second_model(plant_server, tmp_path: Path):
    # given the document the server itself publishes for this model
    base_url, _ = plant_server
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(f"{base_url}/openapi.json", timeout=60).text)
    command = [
        str(Path(sys.executable).with_name("st")), "run", str(spec), "--url", base_url,
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
        # the stateful phase (links between operations) runs against the Park model's server; here the
        # model-dependent schemas are what is new, and the CI budget is finite: the routes' copies under
        # /models/{name}/... take the root's schemas (the Park model's run covers their addressing)
        "--exclude-operation-id-regex", MODEL_ROUTE_COPIES,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "45", "--seed", "20261127",
        "--workers", "2", "--request-timeout", "60", "--output-truncate", "true",
    ]  # fmt: skip
    # when (in tmp_path: schemathesis keeps a cache folder in its working directory)
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    # then
    assert result.returncode == 0, result.stdout[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) (passed|found)", result.stdout)
    assert summary, result.stdout[-3000:]
    assert int(summary.group(1)) >= 45
    assert not (ROOT / ".schemathesis").exists()


def test_no_feature_or_output_name_is_written_in_the_handler():
    from tests.conftest import FEATURES

    for path in (ROOT / "handler").glob("*.py"):
        source = path.read_text()
        for name in (*FEATURES, *PLANT_FEATURES, *PLANT_OUTPUTS):
            assert not re.search(rf"\b{name}\b", source), f"{name} in {path.name}"
