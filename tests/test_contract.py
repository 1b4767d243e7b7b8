"""The published contract: docs/openapi.json is what the code generates, and real answers conform to it."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from scripts.export_openapi import OPENAPI_PATH, document, render
from tests.events import api_event, lambda_context

POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}


def test_the_committed_spec_is_what_the_code_generates():
    assert OPENAPI_PATH.read_text() == render(), "the spec drifted from the code: run `make openapi` and commit it"


def test_the_documented_operations_are_exactly_the_handlers_routes():
    from handler.app import app
    from handler.explorer_app import app as explorer_app  # the explorer's open routes, in a function of their own
    from handler.registry_admin_app import app as admin_app  # the registry's writes, in a function of their own

    paths = document()["paths"]
    documented = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    routes = [route for a in (app, explorer_app, admin_app) for route in (*a._static_routes, *a._dynamic_routes)]
    assert documented == {(route.method, route.path.replace("<", "{").replace(">", "}")) for route in routes}


def test_the_api_serves_the_document(deployed_app):
    # (docs/openapi.json is generated for the deployed model, whatever it is)
    response = deployed_app.lambda_handler(api_event("GET", "/openapi.json"), lambda_context())
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == json.loads(OPENAPI_PATH.read_text())


def test_every_operation_documents_its_errors_with_our_error_body():
    spec = document()
    predict = spec["paths"]["/predict"]["post"]
    assert set(predict["responses"]) == {"200", "400", "413", "422", "500", "503", "504"}
    for status, response in predict["responses"].items():
        media = response["content"]["application/json"]
        if status != "200":
            assert media.get("examples"), f"{status} has examples"
            assert media["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in json.dumps(spec), "Powertools' default 422 body is never sent"
    assert predict["requestBody"]["content"]["application/json"]["examples"].keys() == {"point", "rows", "columns"}


def _validator(spec: dict, path: str, method: str, status: int) -> Draft202012Validator:
    registry = Registry().with_resource("urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    pointer = f"/paths/{path.replace('/', '~1')}/{method}/responses/{status}/content/application~1json/schema"
    return Draft202012Validator({"$ref": f"urn:spec#{pointer}"}, registry=registry)


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (api_event(body=POINT), 200),
        (api_event(body=[POINT, {**POINT, "x1": 0.2}]), 200),
        (api_event(body={k: [v, v / 2] for k, v in POINT.items()}), 200),
        ({**api_event(body=POINT), "queryStringParameters": {"include": "std,interval", "variance": "latent"}}, 200),
        (api_event(raw_body="{"), 400),
        (api_event(body=[POINT] * 10_001), 422),
        (api_event(body={**POINT, "x1": True}), 422),
        ({**api_event(body=POINT), "queryStringParameters": {"variance": "both"}}, 422),
        (api_event("GET", "/health"), 200),
        (api_event("GET", "/model"), 200),
    ],
    ids=["point", "rows", "columns", "options", "bad-json", "too-many", "boolean", "bad-option", "health", "model"],
)
def test_real_answers_conform_to_the_documented_schema(app_with_model, event, status):
    # given the document the app serves for its model
    spec = json.loads(app_with_model.lambda_handler(api_event("GET", "/openapi.json"), lambda_context())["body"])
    # when
    response = app_with_model.lambda_handler(event, lambda_context())
    # then
    assert response["statusCode"] == status
    body = json.loads(response["body"])
    _validator(spec, event["path"], event["httpMethod"].lower(), status).validate(body)


def test_the_registrys_answers_conform_to_the_documented_schemas(
    aws, monkeypatch, tmp_path, app_with_model, tiny_posterior_path
):
    """Each new route's real answer, read and write, against the schema the document gives its status."""
    import re
    from pathlib import Path

    from handler.gp.artifact import manifest_path_for
    from tests.registry_harness import ADMIN_KEY_ID, start_registry

    spec = json.loads(app_with_model.lambda_handler(api_event("GET", "/openapi.json"), lambda_context())["body"])
    registry = start_registry(monkeypatch, tmp_path)
    data = Path(tiny_posterior_path).read_bytes()
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    documented_header = spec["paths"]["/predict"]["post"]["responses"]["200"]["headers"]["X-Model-Version"]
    header = re.compile(documented_header["schema"]["pattern"])

    def conforms(method: str, path: str, documented: str, body=None, status: int = 200, key=ADMIN_KEY_ID) -> dict:
        code, headers, answer = registry.call(method, path, body, key)
        assert code == status, answer
        _validator(spec, documented, method.lower(), status).validate(answer)
        if "X-Model-Version" in headers:
            assert header.fullmatch(headers["X-Model-Version"])
        return answer

    # the admin function's writes
    publish = {"manifest": manifest, "size": len(data)}
    created = conforms("POST", "/models/park/versions", "/models/{name}/versions", publish, 201)
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key=_upload_key("park", created["version"]), Body=data)
    conforms("POST", "/models/park/versions/1/check", "/models/{name}/versions/{version}/check")
    conforms("POST", "/models/park/versions", "/models/{name}/versions", publish, 201)
    conforms("POST", "/models/park/versions/2/check", "/models/{name}/versions/{version}/check", status=409)
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key=_upload_key("park", 2), Body=corrupt)
    conforms("POST", "/models/park/versions/2/check", "/models/{name}/versions/{version}/check", status=422)
    conforms("PUT", "/models/park/aliases/live", "/models/{name}/aliases/{alias}", {"version": 1, "reason": "first"})
    conforms("PUT", "/models/park/aliases/beta", "/models/{name}/aliases/{alias}", {"version": 1})
    conforms("PUT", "/models/park/aliases/beta", "/models/{name}/aliases/{alias}", {"version": 1, "reason": "again"})
    conforms("POST", "/models/park/aliases/beta/rollback", "/models/{name}/aliases/{alias}/rollback", {})
    conforms("DELETE", "/models/park/versions/2", "/models/{name}/versions/{version}")
    conforms("PUT", "/models/park/aliases/live", "/models/{name}/aliases/{alias}", {"version": 2}, 409)
    conforms("POST", "/models/park/versions", "/models/{name}/versions", publish, 403, key="reader")
    # the reading routes
    conforms("GET", "/models", "/models")
    conforms("GET", "/models/park", "/models/{name}")
    conforms("GET", "/models/nope", "/models/{name}", status=404)
    conforms("POST", "/v2/repository/index", "/v2/repository/index")
    conforms("POST", "/models/park/predict", "/models/{name}/predict", POINT)
    conforms("POST", "/models/park@live/predict", "/models/{name}/predict", [POINT, POINT])
    conforms("POST", "/models/park/versions/1/predict", "/models/{name}/versions/{version}/predict", POINT)
    conforms("POST", "/models/park/versions/2/predict", "/models/{name}/versions/{version}/predict", POINT, 404)
    conforms("GET", "/models/park/manifest", "/models/{name}/manifest")
    conforms("POST", "/models/park/jobs", "/models/{name}/jobs", {"points": [POINT]}, 503)  # no jobs here


def _upload_key(name: str, version: int) -> str:
    from handler.registry.store import upload_key

    return upload_key(name, version)
