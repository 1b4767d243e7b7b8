"""The model registry in-process: its table and bucket on moto (inside the `aws` fixture), the API function and the
admin function pointed at them, and a publish that goes through the admin routes as a client's would."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from handler import app, registry_admin_app
from handler.gp.artifact import manifest_path_for
from handler.jobs import worker
from handler.registry.resolver import ModelResolver
from handler.registry.store import RegistryStore, store_from_settings, upload_key
from tests.events import api_event, lambda_context, response_json

ADMIN_KEY_ID = "admin-key-id"


def create_registry(prefix: str = "test", **client_args: Any) -> tuple[str, str]:
    """The registry's bucket and table, as the template declares them (key pk/sk)."""
    bucket = table = f"{prefix}-registry"
    boto3.client("s3", **client_args).create_bucket(Bucket=bucket)
    boto3.client("dynamodb", **client_args).create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return bucket, table


@dataclass
class Registry:
    store: RegistryStore
    resolver: ModelResolver

    def call(self, method: str, path: str, body: Any = None, key_id: str | None = None) -> tuple[int, dict, Any]:
        """A request to whichever function serves it (writes: the admin function); status, headers, JSON."""
        event = api_event(method, path, body)
        event["requestContext"]["identity"]["apiKeyId"] = key_id
        writes = method in ("PUT", "DELETE") or (method == "POST" and _is_write(path)) or "/training-jobs/" in path
        handler = registry_admin_app.lambda_handler if writes else app.lambda_handler
        response = handler(event, lambda_context())
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()} | (
            response.get("headers") or {}
        )
        return response["statusCode"], headers, response_json(response)

    def publish(self, name: str, model_path: Path, *, corrupt: bool = False) -> tuple[int, Any]:
        """Publish `model_path` (a posterior file and its manifest) as a new version of `name`, and check it."""
        manifest = json.loads(manifest_path_for(model_path).read_text())
        data = model_path.read_bytes()
        status, _, created = self.call(
            "POST", f"/models/{name}/versions", {"manifest": manifest, "size": len(data)}, ADMIN_KEY_ID
        )
        assert status == 201, created
        version = created["version"]
        if corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        # the publisher's PUT to the presigned URL, done here with the client (moto in-process serves no URLs)
        self.store.s3.put_object(Bucket=self.store.bucket, Key=upload_key(name, version), Body=data)
        status, _, checked = self.call("POST", f"/models/{name}/versions/{version}/check", None, ADMIN_KEY_ID)
        return status, checked


def _is_write(path: str) -> bool:
    return path.endswith(("/versions", "/check", "/rollback", "/train"))


def start_registry(
    monkeypatch: Any, folder: Path, cache_budget_bytes: int = 2**30, admin_key_id: str = ADMIN_KEY_ID
) -> Registry:
    """Inside mock_aws: the registry's resources, the API, admin and job worker functions configured for them."""
    bucket, table = create_registry()
    settings = dataclasses.replace(
        app.settings, registry_bucket=bucket, registry_table=table, registry_writes=True,
        registry_admin_key_id=admin_key_id, model_cache_dir=folder,
    )  # fmt: skip
    store = store_from_settings(settings)
    resolver = ModelResolver(
        packaged=lambda: app.model,
        store=lambda: store,
        bucket=bucket,
        cache_budget_bytes=cache_budget_bytes,
        cache_dir=folder / "registry",
        retry_interval_s=0,
    )
    monkeypatch.setattr(app, "resolver", resolver)
    # The job worker is a function of its own: its own resolver, alias reads and loaded versions.
    worker_resolver = ModelResolver(
        packaged=lambda: worker.model,
        store=lambda: store,
        bucket=bucket,
        cache_budget_bytes=cache_budget_bytes,
        cache_dir=folder / "worker-registry",
        retry_interval_s=0,
    )
    monkeypatch.setattr(worker, "resolver", worker_resolver)
    monkeypatch.setattr(app.model_routes, "_resolver", resolver)
    monkeypatch.setattr(registry_admin_app, "settings", settings)
    monkeypatch.setattr(registry_admin_app, "_store", store)
    return Registry(store, resolver)
