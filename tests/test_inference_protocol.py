"""The Open Inference Protocol V2 routes, driven by Triton's own HTTP client against the local server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import FEATURES


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
