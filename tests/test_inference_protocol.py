"""The Open Inference Protocol V2 routes: Triton's own HTTP client against the local server, and hostile requests."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import FEATURES
from tests.events import api_event, lambda_context, response_json


@pytest.fixture(scope="module")
def v2(local_server):
    base_url, _ = local_server
    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    yield client, base_url
    client.close()


def model_name(base_url: str) -> tuple[str, str]:
    manifest = httpx.get(f"{base_url}/model", timeout=30).json()
    return manifest["name"], manifest["version"]


def test_health_and_metadata_as_a_v2_client_reads_them(v2):
    client, base_url = v2
    name, version = model_name(base_url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, version)
    assert client.get_server_metadata()["extensions"] == []
    metadata = client.get_model_metadata(name)
    assert metadata["versions"] == [version]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, len(FEATURES)]}]
    assert [o["name"] for o in metadata["outputs"]] == ["mean", "variance"]
    assert client.get_model_metadata(name, version)["name"] == name


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_with_the_triton_client_equals_predict(v2, datatype):
    client, base_url = v2
    name, version = model_name(base_url)
    points = (
        np.random.default_rng(1).uniform(0, 1, size=(50, 4)).astype(np.float64 if datatype == "FP64" else np.float32)
    )
    tensor = triton.InferInput("input", list(points.shape), datatype)
    tensor.set_data_from_numpy(points, binary_data=False)
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("mean", "variance")]
    result = client.infer(name, [tensor], model_version=version, outputs=outputs)
    mean, variance = result.as_numpy("mean"), result.as_numpy("variance")
    assert mean.shape == variance.shape == (50, 1)
    assert mean.dtype == np.float64
    body = {f: points[:, i].astype(float).tolist() for i, f in enumerate(FEATURES)}
    expected = httpx.post(f"{base_url}/predict", json=body, timeout=30).json()
    np.testing.assert_array_equal(mean[:, 0], expected["mean"])
    np.testing.assert_array_equal(variance[:, 0], expected["variance"])
    assert result.get_response()["model_name"] == name


def test_latent_variance_through_parameters(v2):
    client, base_url = v2
    name, _ = model_name(base_url)
    points = np.full((1, 4), 0.5)
    tensor = triton.InferInput("input", [1, 4], "FP64")
    tensor.set_data_from_numpy(points, binary_data=False)
    latent = client.infer(name, [tensor], parameters={"variance": "latent"}).as_numpy("variance")
    noisy = client.infer(name, [tensor]).as_numpy("variance")
    expected = httpx.post(f"{base_url}/predict?variance=latent", json=dict.fromkeys(FEATURES, 0.5), timeout=30).json()
    assert latent[0, 0] == expected["variance"]
    assert noisy[0, 0] > latent[0, 0]


def test_errors_reach_the_v2_client_as_the_protocol_says(v2):
    client, base_url = v2
    name, _ = model_name(base_url)
    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        client.get_model_metadata("nope")
    tensor = triton.InferInput("input", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3)), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"expected \[N, 4\]"):
        client.infer(name, [tensor])
    outside = triton.InferInput("input", [1, 4], "FP64")
    outside.set_data_from_numpy(np.array([[5.0, 0.5, 0.5, 0.5]]), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"x1\) = 5 is outside"):
        client.infer(name, [outside])
    answer = httpx.post(f"{base_url}/v2/models/{name}/infer", content=b"{not json", timeout=30)
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}


def infer_in_process(app, body: str) -> tuple[int, dict]:
    """POST infer through lambda_handler, with the model's own name; the answer must be JSON whatever its status."""
    name = app.model.manifest().name
    response = app.lambda_handler(api_event(path=f"/v2/models/{name}/infer", raw_body=body), lambda_context())
    return response["statusCode"], response_json(response)


def v2_body(**changes: Any) -> str:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [0.5, 0.5, 0.5, 0.5]}
    request = {"inputs": [tensor | changes.pop("tensor", {})], **changes}
    return json.dumps(request)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (v2_body(tensor={"datatype": ["FP64"]}), "datatype ['FP64'] is not supported"),
        (v2_body(tensor={"datatype": {"FP64": 1}}), "datatype {'FP64': 1} is not supported"),
        (v2_body(tensor={"name": ["input"]}), "input name: expected a string"),
        (v2_body(tensor={"shape": [True, 4]}), "expected [N, 4]"),
        (v2_body(id=7), "id: expected a string of Unicode text, got 7"),
        (v2_body(id="x").replace('"x"', '"\\ud800"'), "id: expected a string of Unicode text, got '\\ud800'"),
        (v2_body(parameters="latent"), "parameters: expected an object"),
        (v2_body(parameters={"variance": ["latent"]}), "parameter variance: expected noisy or latent"),
        (v2_body(outputs=[{"name": ["mean"]}]), 'outputs: expected a list of {"name": ...}'),
    ],
    ids=[
        "datatype-list", "datatype-object", "name-list", "shape-boolean", "id-number", "id-lone-surrogate",
        "parameters-string", "variance-list", "output-name-list",
    ],
)  # fmt: skip
def test_a_v2_field_of_the_wrong_type_is_a_400_naming_it(app_with_model, body: str, message: str):
    status, answer = infer_in_process(app_with_model, body)
    assert status == 400, answer
    assert message in answer["error"], answer


def test_a_v2_id_is_echoed_as_sent(app_with_model):
    status, answer = infer_in_process(app_with_model, v2_body(id="run-7 é"))
    assert status == 200, answer
    assert answer["id"] == "run-7 é"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ("[" * 30_000 + "0.5" + "]" * 30_000, 422, "too many arrays and objects"),
        ("[[[" + "1" + "0" * 400 + ", 0.5, 0.5, 0.5]]]", 400, "must hold 4 finite numbers"),
        ('[{"\\ud800": 1}]', 400, "must hold 4 finite numbers"),
        ("[" * 260 + "0.5" + "]" * 260, 400, "must hold 4 finite numbers"),
    ],
    ids=["nested-singletons", "400-digit-integer", "lone-surrogate-key", "nested-260-deep"],
)
def test_hostile_v2_data_is_refused_with_a_4xx(app_with_model, data: str, status: int, message: str):
    body = v2_body(tensor={"data": "DATA"}).replace('"DATA"', data)
    code, answer = infer_in_process(app_with_model, body)
    assert code == status, answer
    assert message in answer["error"]


@pytest.fixture
def broken_app(monkeypatch: pytest.MonkeyPatch, model_copy):
    """handler.app on a model whose manifest reads but whose artifact cannot be loaded."""
    from handler import app
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import LazyModel

    model_copy.write_bytes(b"not a model")
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    return app


POINT = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/{name}/infer", json.loads(v2_body())),
        ("POST", "/v2/models/{name}/versions/{version}/infer", json.loads(v2_body())),
        ("GET", "/v2/models/{name}/ready", None),
        ("POST", "/predict", POINT),
        ("POST", "/sample", {"points": [POINT], "samples": 2}),
        ("POST", "/sensitivity", {"n": 64}),
        ("POST", "/jobs", {"points": [POINT]}),  # a deployment without jobs (no bucket, table or queue here)
    ],
    ids=["v2-infer", "v2-infer-version", "v2-model-ready", "predict", "sample", "sensitivity", "jobs-unavailable"],
)
def test_every_503_says_when_to_try_again(broken_app, method: str, path: str, body: Any):
    # given a model that cannot be loaded (and no jobs backend)
    manifest = broken_app.model.manifest()
    path = path.format(name=manifest.name, version=manifest.version)
    assert not broken_app.settings.jobs_enabled
    # when
    response = broken_app.lambda_handler(api_event(method, path, body), lambda_context())
    # then the 503 carries Retry-After, in whole seconds, as the README promises for every 503
    assert response["statusCode"] == 503, response["body"]
    assert response["multiValueHeaders"]["Retry-After"] == [str(max(1, round(broken_app.settings.model_retry_seconds)))]
    assert "error" in response_json(response)
