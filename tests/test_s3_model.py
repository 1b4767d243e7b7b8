"""A model from S3 (MODEL_S3_URI), against moto's S3: success, each failure, and no second download when warm."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from handler.config import SettingsError, load_settings
from handler.gp.artifact import ModelUnavailableError, S3Artifact, manifest_path_for, parse_s3_uri
from handler.gp.model import LazyModel
from tests.events import api_event, lambda_context, response_json
from tests.test_app import MODEL_UNAVAILABLE

BUCKET = "surrogates"
KEY = "plant/v1/model.pkl"
URI = f"s3://{BUCKET}/{KEY}"
POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    """moto's S3 with an empty bucket, and a client that counts GetObject calls."""
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.get_object_calls = []  # type: ignore[attr-defined]
        client.meta.events.register(
            "provide-client-params.s3.GetObject", lambda params, **_: client.get_object_calls.append(params["Key"])
        )
        yield client


def upload(client, model_path: Path, key: str = KEY, pickle_bytes: bytes | None = None) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=pickle_bytes or model_path.read_bytes())
    manifest_key = key.removesuffix(".pkl") + ".manifest.json"
    client.put_object(Bucket=BUCKET, Key=manifest_key, Body=manifest_path_for(model_path).read_bytes())


def s3_app(monkeypatch: pytest.MonkeyPatch, client, cache_dir: Path):
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(S3Artifact(URI, cache_dir, client=client), retry_interval_s=0))
    return app


def logged_reason(caplog: pytest.LogCaptureFixture) -> str:
    """The reason of the one "model unavailable" error logged."""
    [error] = [record for record in caplog.records if record.getMessage() == "model unavailable"]
    return str(error.reason)


def predict(app, body=POINT) -> tuple[int, dict]:
    response = app.lambda_handler(api_event(body=body), lambda_context())
    return response["statusCode"], response_json(response)


def test_a_model_from_s3_is_downloaded_once_and_answers_as_the_packaged_one(
    s3, tiny_model_path: Path, app_with_model, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # given the tiny model in S3, and the same model packaged
    upload(s3, tiny_model_path)
    _, packaged = predict(app_with_model)
    app = s3_app(monkeypatch, s3, tmp_path / "cache")
    # when three requests come to one execution environment
    answers = [predict(app) for _ in range(3)]
    # then all answer as the packaged model does, and the pickle was fetched once
    assert answers == [(200, packaged)] * 3
    assert s3.get_object_calls == [KEY.removesuffix(".pkl") + ".manifest.json", KEY]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        json.loads(manifest_path_for(tiny_model_path).read_text())["sha256"] + ".pkl"
    ]


def test_a_file_left_by_an_earlier_attempt_is_checked_not_fetched_again(s3, tiny_model_path: Path, tmp_path: Path):
    # given a first load in this environment
    upload(s3, tiny_model_path)
    LazyModel(S3Artifact(URI, tmp_path, client=s3)).get()
    s3.get_object_calls.clear()
    # when another loader starts (as after a failed load) with the same /tmp
    LazyModel(S3Artifact(URI, tmp_path, client=s3)).get()
    # then only the small manifest is read again
    assert s3.get_object_calls == [KEY.removesuffix(".pkl") + ".manifest.json"]


def test_a_missing_object_gives_503_and_a_later_request_retries(
    s3, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # given an empty bucket
    app = s3_app(monkeypatch, s3, tmp_path)
    # when
    status, body = predict(app)
    # then the caller is told the model is unavailable, and the log names the missing object
    assert status == 503
    assert body == MODEL_UNAVAILABLE
    assert logged_reason(caplog) == f"s3://{BUCKET}/plant/v1/model.manifest.json does not exist"
    # and once the objects are there, the next request loads them
    upload(s3, tiny_model_path)
    assert predict(app)[0] == 200


def test_a_missing_pickle_beside_its_manifest_gives_503(s3, tiny_model_path: Path, tmp_path: Path):
    upload(s3, tiny_model_path)
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    with pytest.raises(ModelUnavailableError, match=f"^{URI} does not exist$"):
        LazyModel(S3Artifact(URI, tmp_path, client=s3)).get()


def test_a_missing_bucket_gives_503(s3, tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="bucket elsewhere does not exist"):
        S3Artifact("s3://elsewhere/model.pkl", tmp_path, client=s3).fetch_manifest()


def test_access_denied_gives_503_naming_the_object(tmp_path: Path):
    # given S3 answering 403, as it does without s3:GetObject on the object
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        stubber.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        # then
        with pytest.raises(
            ModelUnavailableError, match=f"^access to s3://{BUCKET}/plant/v1/model.manifest.json is denied$"
        ):
            S3Artifact(URI, tmp_path, client=client).fetch_manifest()


def test_a_pickle_that_does_not_match_the_manifest_is_refused_and_not_kept(
    s3, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # given a manifest and a different pickle
    upload(s3, tiny_model_path, pickle_bytes=tiny_model_path.read_bytes()[:-10] + b"0123456789")
    app = s3_app(monkeypatch, s3, tmp_path / "cache")
    # when
    status, body = predict(app)
    # then
    assert status == 503
    assert body == MODEL_UNAVAILABLE
    assert logged_reason(caplog) == f"{URI} does not match its manifest checksum (corrupt or replaced)"
    assert list((tmp_path / "cache").iterdir()) == [], "nothing unverified is left in /tmp"


def test_the_setting_takes_only_an_s3_uri_of_a_pickle():
    assert load_settings({"MODEL_S3_URI": URI}).model_s3_uri == URI
    assert isinstance(load_settings({"MODEL_S3_URI": URI}).artifact_source(), S3Artifact)
    for bad in ("https://surrogates.s3.amazonaws.com/model.pkl", "s3://surrogates/model.json", "s3://B/model.pkl"):
        with pytest.raises(SettingsError, match=r"MODEL_S3_URI: expected s3://BUCKET/KEY\.npz"):
            load_settings({"MODEL_S3_URI": bad})
    assert parse_s3_uri("s3://my.bucket-1/a/b/c.pkl") == ("my.bucket-1", "a/b/c.pkl")
