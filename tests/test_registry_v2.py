"""The Open Inference Protocol on registry models: V2 paths route to the resolver (a registry model by name or version
number, the packaged model by its manifest's name and version), and the repository extension lists every version
with its state, as Triton's own client reads it."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from handler.gp.artifact import PackagedArtifact
from handler.gp.model import load_model
from tests.conftest import FEATURES, PARK_POSTERIOR
from tests.events import api_event, lambda_context
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

POINTS = np.array([[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 0.5, 0.5]])


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model, tiny_posterior_path) -> Registry:
    """`park` 1 (the tiny model) on `live`, `park` 2 (the Park example), `park` 3 FAILED, `park` 4 deleted."""
    registry = start_registry(monkeypatch, tmp_path)
    for path, corrupt in ((tiny_posterior_path, False), (PARK_POSTERIOR, False), (tiny_posterior_path, True),
                          (tiny_posterior_path, False)):  # fmt: skip
        registry.publish("park", path, corrupt=corrupt)
    assert registry.call("PUT", "/models/park/aliases/live", {"version": 1}, ADMIN_KEY_ID)[0] == 200
    assert registry.call("DELETE", "/models/park/versions/4", None, ADMIN_KEY_ID)[0] == 200
    return registry


def v2_request(points: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": list(points.shape), "datatype": "FP64", "data": points.ravel().tolist()}]
    }


def means_of(path: Path, points: np.ndarray) -> np.ndarray:
    return load_model(PackagedArtifact(path)).model.predict(points)[0]


def close_to(answer: list[float], want: np.ndarray) -> bool:
    """Equal to rounding: the same posterior code on the same points, relative to the outputs' scale."""
    return bool(np.abs(np.asarray(answer) - want.ravel()).max() <= 1e-9 * np.abs(want).max())


def test_v2_infers_with_a_registry_model_by_name_or_version_and_says_which(
    registry: Registry, tiny_posterior_path: Path, app_with_model
):
    # when park is asked by name (its live alias, on version 1), by version 2, and by an alias on version 2
    by_name = registry.call("POST", "/v2/models/park/infer", v2_request(POINTS))
    by_version = registry.call("POST", "/v2/models/park/versions/2/infer", v2_request(POINTS))
    assert registry.call("PUT", "/models/park/aliases/beta", {"version": 2}, ADMIN_KEY_ID)[0] == 200
    by_alias = registry.call("POST", "/v2/models/park@beta/infer", v2_request(POINTS))
    # then each answers with its version's predictions, and names it in the body and the header
    for (status, headers, answer), version, path in zip(
        (by_name, by_version, by_alias),
        ("1", "2", "2"),
        (tiny_posterior_path, PARK_POSTERIOR, PARK_POSTERIOR),
        strict=True,
    ):
        assert status == 200, answer
        assert (answer["model_name"], answer["model_version"]) == ("park", version)
        assert headers["X-Model-Version"] == f"park/{version}"
        assert close_to(answer["outputs"][0]["data"], means_of(path, POINTS))
    assert not close_to(by_name[2]["outputs"][0]["data"], means_of(PARK_POSTERIOR, POINTS))  # the check can fail
    # and metadata and readiness answer for the registry model too
    status, _, metadata = registry.call("GET", "/v2/models/park/versions/2")
    assert status == 200, metadata
    assert (metadata["name"], metadata["versions"]) == ("park", ["2"])
    assert metadata["inputs"][0]["shape"] == [-1, len(FEATURES)]
    ready = app_with_model.lambda_handler(api_event("GET", "/v2/models/park/ready"), lambda_context())
    assert (ready["statusCode"], ready["multiValueHeaders"]["X-Model-Version"]) == (200, ["park/1"])


def test_v2_still_serves_the_packaged_model_by_its_manifest_name_and_version(registry: Registry, app_with_model):
    manifest = app_with_model.model.manifest()
    status, headers, answer = registry.call(
        "POST", f"/v2/models/{manifest.name}/versions/{manifest.version}/infer", v2_request(POINTS)
    )
    assert status == 200, answer
    assert (answer["model_name"], answer["model_version"]) == (manifest.name, manifest.version)
    assert headers["X-Model-Version"] == f"{manifest.name}/{manifest.version}"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/park/versions/3/infer", "park version 3 is FAILED (READY: 2, 1)"),
        ("/v2/models/park/versions/4/infer", "park version 4 is DELETED"),
        ("/v2/models/park/versions/9/infer", "park version 9 does not exist"),
        ("/v2/models/park/versions/two/infer", "a version is an integer"),
        ("/v2/models/nope/infer", "no model 'nope'; this server has"),
        ("/v2/models/park@gamma/infer", "park has no alias 'gamma'"),
        ("/v2/models/park@beta/versions/2/infer", "not both"),
        ("/v2/models/..%2Fetc/infer", "a model name starts with a letter"),
    ],
)
def test_a_v2_request_for_a_version_that_cannot_serve_is_a_404_saying_what_exists(registry, path, message):
    status, _, answer = registry.call("POST", path, v2_request(POINTS))
    assert status == 404, answer
    assert set(answer) == {"error"}, answer
    assert message in answer["error"]


def test_the_repository_index_lists_every_version_with_its_state(registry: Registry, app_with_model):
    manifest = app_with_model.model.manifest()
    status, _, index = registry.call("POST", "/v2/repository/index")
    assert status == 200, index
    # the protocol's entries: name, version (text), state, reason; a deleted version is no longer listed
    assert all(set(entry) == {"name", "version", "state", "reason"} for entry in index)
    assert all(isinstance(entry[key], str) for entry in index for key in entry)
    states = {(e["name"], e["version"]): e["state"] for e in index}
    assert states == {
        (manifest.name, manifest.version): "READY",
        ("park", "1"): "READY",
        ("park", "2"): "READY",
        ("park", "3"): "UNAVAILABLE",
    }
    failed = next(e for e in index if e["version"] == "3")
    assert failed["reason"] == "the artifact does not match its manifest's sha256 or size"
    # and {"ready": true} keeps the READY ones only; anything else is refused naming the body
    status, _, ready = registry.call("POST", "/v2/repository/index", {"ready": True})
    assert status == 200, ready
    assert [e["state"] for e in ready] == ["READY"] * 3
    status, _, refused = registry.call("POST", "/v2/repository/index", {"ready": "yes"})
    assert (status, refused["details"][0]["field"]) == (400, "body")


@contextlib.contextmanager
def served_in_process(app: Any) -> Iterator[str]:
    """The app behind a plain HTTP server in a thread of this process (so inside moto's mock): host:port."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else None
            path = self.path.partition("?")[0]
            event = api_event(self.command, path, raw_body=body)
            response = app.lambda_handler(event, lambda_context())
            data = response["body"] or ""
            content = base64.b64decode(data) if response.get("isBase64Encoded") else data.encode()
            self.send_response(response["statusCode"])
            headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
            for key, value in (headers | (response.get("headers") or {})).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_tritons_client_reads_the_index_and_infers_with_registry_models(registry: Registry, app_with_model):
    with served_in_process(app_with_model) as url:
        client = triton.InferenceServerClient(url=url)
        try:
            index = client.get_model_repository_index()
            assert {(e["name"], e["version"], e["state"]) for e in index} >= {
                ("park", "1", "READY"),
                ("park", "3", "UNAVAILABLE"),
            }
            assert client.is_model_ready("park")
            assert client.is_model_ready("park", "2")
            assert client.get_model_metadata("park", "2")["versions"] == ["2"]
            tensor = triton.InferInput("input", list(POINTS.shape), "FP64")
            tensor.set_data_from_numpy(POINTS, binary_data=False)
            outputs = [triton.InferRequestedOutput("mean", binary_data=False)]
            result = client.infer("park", [tensor], model_version="2", outputs=outputs)
            assert result.get_response()["model_version"] == "2"
            want = means_of(PARK_POSTERIOR, POINTS)
            np.testing.assert_allclose(result.as_numpy("mean"), want, rtol=0, atol=1e-9 * np.abs(want).max())
            with pytest.raises(InferenceServerException, match="park version 3 is FAILED"):
                client.infer("park", [tensor], model_version="3")
        finally:
            client.close()
