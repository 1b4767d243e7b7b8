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

    paths = document()["paths"]
    documented = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    routes = [route for a in (app, explorer_app) for route in (*a._static_routes, *a._dynamic_routes)]
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
