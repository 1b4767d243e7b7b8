"""The client and the model registry: a model addressed by name, alias or version on every call, and publish,
promote, rollback and delete through the admin routes, in-process (the two functions on moto, tests/registry_harness)
through a transport that hands each request to the function API Gateway would route it to."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import boto3
import httpx
import numpy as np
import pytest
from gpr_client import ApiError, PublishFailedError, SurrogateClient

from handler import app, registry_admin_app
from tests.conftest import FEATURES, serving
from tests.events import api_event, lambda_context
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

PLANT_POINT = {"temperature": 300.0, "pressure": 5.0, "flow_rate": 1.0}
ROOT = Path(__file__).resolve().parent.parent
HTTP_ADMIN_KEY = "adm1n"


class InProcessApi(httpx.BaseTransport):
    """API Gateway in-process: a request's x-api-key becomes the caller's key id, writes go to the admin function,
    everything else to the API function; a PUT to S3 (a presigned upload) lands in moto's bucket."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith("amazonaws.com"):
            bucket, _, key = unquote(request.url.path).lstrip("/").partition("/")  # path style: s3.amazonaws.com/B/K
            if not request.url.host.startswith("s3."):  # virtual-hosted style: B.s3.amazonaws.com/K
                bucket, key = request.url.host.split(".s3")[0], unquote(request.url.path).lstrip("/")
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=request.read())
            return httpx.Response(200)
        path, method = request.url.path, request.method
        event = api_event(method, path, raw_body=request.read().decode() or None)
        params = dict(request.url.params)
        event["queryStringParameters"] = params or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in params.items()} or None
        event["requestContext"]["identity"]["apiKeyId"] = request.headers.get("x-api-key")
        writes = method in ("PUT", "DELETE") or (
            method == "POST" and path.endswith(("/versions", "/check", "/rollback"))
        )
        answer = (registry_admin_app if writes else app).lambda_handler(event, lambda_context())
        headers = {k: v[0] for k, v in (answer.get("multiValueHeaders") or {}).items()} | (answer.get("headers") or {})
        body = answer.get("body") or ""
        content = base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode()
        headers.pop("Content-Encoding", None) if not answer.get("isBase64Encoded") else None
        return httpx.Response(answer["statusCode"], headers=headers, content=content)


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


def client_of(registry: Registry, **options) -> SurrogateClient:
    """A client of the in-process API (no retries: a refusal is the answer under test)."""
    return SurrogateClient("https://api.example.org", transport=InProcessApi(), max_attempts=1, **options)


def test_publish_promote_with_a_canary_and_roll_back_through_the_client(
    registry: Registry, plant_model_path: Path, tiny_posterior_path: Path
):
    # given two versions of the plant model and one of the tiny model, published with the admin key
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        first = admin.publish(plant_model_path, "plant")
        second = admin.publish(plant_model_path, "plant")
        tiny = admin.publish(tiny_posterior_path, "tiny")
        assert (first["state"], second["state"], tiny["state"]) == ("READY", "READY", "READY")
        assert (first["version"], second["version"]) == (1, 2)
        # when live goes to 1, then to 1 with 2 as a canary, then back
        admin.promote("plant", 1, reason="first")
        split = admin.promote("plant", 1, canary=(2, 0.25), reason="try 2")
        back = admin.rollback("plant", reason="2 is slower")
    # then each move answered the alias as it became, and rollback went back to what live served before the split
    assert (split["version"], split["canary"]) == (1, {"version": 2, "weight": 0.25})
    assert (back["version"], back.get("canary")) == (1, None)
    with client_of(registry) as reader:
        listed = {m["name"]: m for m in reader.models()}
        described = reader.model_versions("plant")
    assert (listed["plant"]["latest_version"], listed["plant"]["aliases"]["live"]) == (2, {"version": 1})
    assert sorted(m["source"] for m in listed.values()) == ["packaged", "registry", "registry"]
    assert [v["version"] for v in described["versions"]] == [2, 1]
    assert [(h["action"], h["reason"]) for h in described["history"]] == [
        ("rollback", "2 is slower"),
        ("set", "try 2"),
        ("set", "first"),
    ]


def test_a_client_on_a_model_predicts_from_it_and_says_which_version_answered(
    registry: Registry, plant_model_path: Path
):
    # given plant published twice, live on version 1
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        admin.publish(plant_model_path, "plant")
        admin.publish(plant_model_path, "plant")
        admin.promote("plant", 1)
    # when the model is asked for by name, by alias and by version, and the packaged model at the root
    by_name, by_alias, pinned, packaged = (
        client_of(registry, model="plant"),
        client_of(registry, model="plant@live"),
        client_of(registry, model="plant", version=2),
        client_of(registry),
    )
    with by_name, by_alias, pinned, packaged:
        answers = [c.predict([PLANT_POINT]) for c in (by_name, by_alias, pinned)]
        root = packaged.predict(np.full((1, 4), 0.5))
        # then each names its model's features, and says (on the answer and on the client) which version answered
        assert (by_name.model().name, by_name.model().features) == ("plant", tuple(PLANT_POINT))
        assert [a.model_versions for a in answers] == [("plant/1",), ("plant/1",), ("plant/2",)]
        assert (by_name.last_model_version, pinned.last_model_version) == ("plant/1", "plant/2")
        assert root.model_versions == (packaged.last_model_version,)
        assert not packaged.last_model_version.startswith("plant/")
    # and both versions, being the same file, predict the same numbers
    np.testing.assert_allclose(answers[2].mean, answers[0].mean, rtol=1e-12)


def test_writes_without_the_admin_key_are_refused_naming_the_permission(registry: Registry, plant_model_path: Path):
    with client_of(registry, api_key="a-readers-key") as reader:
        with pytest.raises(ApiError) as refused:
            reader.publish(plant_model_path, "plant")
        assert refused.value.status == 403
        assert refused.value.error == "admin permission required"
        assert refused.value.details[0]["field"] == "permission"
        for write in (lambda: reader.promote("plant", 1), lambda: reader.rollback("plant")):
            with pytest.raises(ApiError, match="admin permission required"):
                write()
        # and nothing was published
        assert [m["name"] for m in reader.models() if m["source"] == "registry"] == []


def test_a_publish_that_fails_its_check_raises_with_the_reason_and_the_version_stays_failed(
    registry: Registry, plant_model_path: Path, tmp_path: Path
):
    # given a posterior file one bit off what its manifest says
    broken = tmp_path / "broken" / plant_model_path.name
    broken.parent.mkdir()
    manifest = plant_model_path.with_name(f"{plant_model_path.stem}.manifest.json")
    shutil.copy(manifest, broken.with_name(manifest.name))
    data = bytearray(plant_model_path.read_bytes())
    data[-1] ^= 1
    broken.write_bytes(bytes(data))
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        # when it is published, then the error says which version failed and why
        with pytest.raises(PublishFailedError) as failed:
            admin.publish(broken, "plant")
        assert (failed.value.name, failed.value.version) == ("plant", 1)
        assert "sha256" in failed.value.reason
        # and the registry shows it FAILED, with the same reason, and refuses to serve it
        (version,) = admin.model_versions("plant")["versions"]
        assert (version["state"], version["reason"]) == ("FAILED", failed.value.reason)
        with pytest.raises(ApiError) as refused:
            admin.promote("plant", 1)
        assert refused.value.status in (404, 409, 422)


def test_a_model_without_its_manifest_beside_it_is_refused_before_any_request(tmp_path: Path):
    lone = tmp_path / "model.npz"
    lone.write_bytes(b"\x00")
    sent: list[str] = []
    transport = httpx.MockTransport(lambda request: sent.append(str(request.url)) or httpx.Response(500))
    with (
        SurrogateClient("https://api.example.org", transport=transport) as client,
        pytest.raises(FileNotFoundError, match=r"model\.manifest\.json"),
    ):
        client.publish(lone, "plant")
    assert sent == []


def test_an_unknown_model_is_a_404_naming_the_models_there_are(registry: Registry, plant_model_path: Path):
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        admin.publish(plant_model_path, "plant")
        admin.promote("plant", 1)
    with client_of(registry, model="plnat") as misspelt:
        with pytest.raises(ApiError) as unknown:
            misspelt.predict([PLANT_POINT])
        assert unknown.value.status == 404
        assert "plant" in str(unknown.value)
        assert "plnat" in str(unknown.value)
        with pytest.raises(ApiError) as described:
            misspelt.model_versions("plnat")
        assert described.value.status == 404
        assert "plant" in str(described.value)


def test_a_version_is_deleted_unless_an_alias_points_at_it(registry: Registry, plant_model_path: Path):
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        admin.publish(plant_model_path, "plant")
        admin.publish(plant_model_path, "plant")
        admin.promote("plant", 1)
        # when the version live serves is deleted, then it is refused; the other one is deleted
        with pytest.raises(ApiError) as refused:
            admin.delete_version("plant", 1)
        assert refused.value.status == 409
        assert admin.delete_version("plant", 2)["state"] == "DELETED"
        states = {v["version"]: v["state"] for v in admin.model_versions("plant")["versions"]}
        assert states == {1: "READY", 2: "DELETED"}
    with client_of(registry, model="plant", version=2) as pinned, pytest.raises(ApiError) as gone:
        pinned.predict([PLANT_POINT])
    assert gone.value.status == 404


# --- over HTTP: the local server (make serve) with its registry on moto ------------------------------------------


@pytest.fixture(scope="module")
def registry_server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make serve ADMIN_API_KEY=adm1n`: writes take that key alone."""
    folder = tmp_path_factory.mktemp("client-registry")
    with serving(tiny_posterior_path, folder, "--admin-api-key", HTTP_ADMIN_KEY) as (base_url, _):
        yield base_url


def publish_model(*arguments: str) -> subprocess.CompletedProcess:
    """scripts/publish_model.py, as `make publish-model` runs it."""
    command = [sys.executable, "scripts/publish_model.py", *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_publish_model_and_the_client_over_http(registry_server: str, plant_model_path: Path):
    # given the local server, its registry empty
    url = ["--url", registry_server]
    # when the plant model is published without the admin key, then with it (and promoted)
    refused = publish_model(str(plant_model_path), "--name", "plant", *url)
    published = publish_model(
        str(plant_model_path), "--name", "plant", *url, "--admin-key", HTTP_ADMIN_KEY, "--promote", "--reason", "v1"
    )
    # then the first says why in one line and exits 1, the second prints the version's record and the alias's
    assert refused.returncode == 1
    assert "HTTP 403: admin permission required" in refused.stderr
    assert published.returncode == 0, published.stderr
    version, alias = (json.loads(part) for part in published.stdout.replace("}\n{", "}\0{").split("\0"))
    assert (version["version"], version["state"], alias["version"]) == (1, "READY", 1)
    # and a client on the model predicts from it, saying which version answered, beside the packaged model
    with SurrogateClient(registry_server, model="plant") as plant, SurrogateClient(registry_server) as root:
        assert plant.predict([PLANT_POINT]).model_versions == ("plant/1",)
        assert plant.last_model_version == "plant/1"
        assert {m["name"]: m["source"] for m in root.models()}["plant"] == "registry"
        assert root.model_versions("plant")["history"][0]["reason"] == "v1"
        assert not root.predict(np.full((1, 4), 0.5)).model_versions[0].startswith("plant/")


# --- where each call goes (a scripted service) ------------------------------------------------------------------

PARK_MANIFEST = {"name": "park1991", "version": "1", "features": list(FEATURES), "outputs": ["y"],
                 "bounds": {f: [0.0, 1.0] for f in FEATURES}, "limits": {"max_batch_size": 10_000},
                 "published_training_data": "inputs"}  # fmt: skip


def scripted_answer(request: httpx.Request) -> httpx.Response:
    """A plausible answer to each model call of a one-output, four-feature model, from version park1991/3."""
    path = request.url.path
    body = json.loads(request.content) if request.content else {}
    point = {"x": dict.fromkeys(FEATURES, 0.5), "prediction": {"mean": 1.0, "variance": 0.1}, "acquisition": 0.2}
    answers = {
        "/model": PARK_MANIFEST,
        "/manifest": PARK_MANIFEST,
        "/training-data": {"published": "inputs", "inputs": {f: [0.5] for f in FEATURES}},
        "/predict": {"mean": [1.0] * len(body.get("x1", [])), "variance": [0.1] * len(body.get("x1", []))},
        "/sample": {"samples": [[1.0]], "seed": 1},
        "/suggest": {"points": [point], "seed": 1},
        "/jobs": {"id": "job-1", "status": "RUNNING", "progress": {"points": 1, "points_done": 0}},
    }
    answer = next((a for suffix, a in answers.items() if path.endswith(suffix)), {"seed": 1})
    if request.url.params.get("include") == "covariance":
        answer = {**answer, "covariance": [[0.1]]}
    return httpx.Response(200, json=answer, headers={"X-Model-Version": "park1991/3"})


@pytest.mark.parametrize(
    ("options", "prefix"),
    [
        ({}, ""),
        ({"model": "park1991"}, "/models/park1991"),
        ({"model": "park1991@canary"}, "/models/park1991@canary"),
        ({"model": "park1991", "version": 3}, "/models/park1991/versions/3"),
    ],
)
def test_every_model_call_goes_to_the_model_asked_for(options: dict, prefix: str):
    # given a client on the packaged model, a model by name, by alias, or a version
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(f"{request.method} {request.url.path}")
        return scripted_answer(request)

    point = np.full((1, 4), 0.5)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler), **options) as client:
        # when each model call is made
        client.model()
        client.training_data()
        client.predict(point)
        client.covariance(point)
        client.sample(point, 1)
        client.sensitivity()
        client.propagate()
        client.suggest()
        client.submit(point)
        client.job("job-1")
    # then each went to that model's routes (the manifest at /model at the root, /manifest under a model), and the
    # version that answered is on the client
    model_document = "/model" if not prefix else f"{prefix}/manifest"
    training = "/model/training-data" if not prefix else f"{prefix}/training-data"
    assert paths == [
        f"GET {model_document}",
        f"GET {training}",
        f"POST {prefix}/predict",
        f"POST {prefix}/predict",
        f"POST {prefix}/sample",
        f"POST {prefix}/sensitivity",
        f"POST {prefix}/propagate",
        f"POST {prefix}/suggest",
        f"POST {prefix}/jobs",
        "GET /jobs/job-1",  # a job's id is the API's, whichever model computes it
    ]
    assert client.last_model_version == "park1991/3"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": 3}, "needs model="),
        ({"model": "park1991@live", "version": 3}, "not both"),
        ({"model": ""}, "model's name"),
    ],
)
def test_a_model_asked_for_in_two_ways_or_none_is_refused(options: dict, message: str):
    with pytest.raises(ValueError, match=message):
        SurrogateClient("https://api.example.org", **options)


def test_a_name_cannot_reach_another_path():
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return scripted_answer(request)

    with SurrogateClient("https://api.example.org", model="../jobs", transport=httpx.MockTransport(handler)) as c:
        c.model()
    assert paths == ["/models/..%2Fjobs/manifest"]
