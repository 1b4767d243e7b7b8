"""Regenerate events/ with `sam local generate-event apigateway aws-proxy`, one file per case.

SAM's sample is a `{proxy+}` event; the only edit is to name the explicit route the template
declares, so `sam local invoke -e events/<name>.json` sees what API Gateway would send.

    python scripts/generate_events.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"

SINGLE = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}
BATCH = [SINGLE, {"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}, {"x1": 0.9, "x2": 0.05, "x3": 0.5, "x4": 0.25}]

# name: (method, path, body or None, route resource or None for an undeclared path)
CASES: dict[str, tuple[str, str, str | None, str | None]] = {
    "predict": ("POST", "/predict", json.dumps(SINGLE), "/predict"),
    "predict-batch": ("POST", "/predict", json.dumps(BATCH), "/predict"),
    "health": ("GET", "/health", None, "/health"),
    "model": ("GET", "/model", None, "/model"),
    "bad-missing-field": ("POST", "/predict", json.dumps({"x1": 0.5, "x2": 0.5, "x3": 0.5}), "/predict"),
    "bad-boolean-value": ("POST", "/predict", json.dumps({**SINGLE, "x2": True}), "/predict"),
    "bad-invalid-json": ("POST", "/predict", '{"x1": 0.5, "x2": 0.5,', "/predict"),
    "bad-outside-domain": ("POST", "/predict", json.dumps({**SINGLE, "x3": 7.5}), "/predict"),
    "bad-wrong-method": ("GET", "/predict", None, "/predict"),
    "bad-unknown-route": ("GET", "/predictions", None, None),
}


def sam_event(method: str, path: str, body: str | None) -> dict:
    sam = shutil.which("sam") or str(Path(sys.executable).with_name("sam"))
    command = [
        sam,
        "local",
        "generate-event",
        "apigateway",
        "aws-proxy",
        "--method",
        method,
        "--path",
        path.lstrip("/"),
    ]
    if body is not None:
        command += ["--body", body]
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)


def main() -> None:
    for name, (method, path, body, resource) in CASES.items():
        event = sam_event(method, path, body)
        if body is None:
            event["body"], event["isBase64Encoded"] = None, False
        event["resource"] = event["requestContext"]["resourcePath"] = resource or path
        event["pathParameters"] = None
        (EVENTS_DIR / f"{name}.json").write_text(json.dumps(event, indent=2) + "\n")
        print(f"events/{name}.json: {method} {path}")


if __name__ == "__main__":
    main()
