"""Regenerate events/ with `sam local generate-event apigateway aws-proxy`, one file per case.

SAM's sample is a `{proxy+}` event; the only edit is to name the explicit route the template
declares, so `sam local invoke -e events/<name>.json` sees what API Gateway would send. The bodies
follow the model's manifest: its feature names, and points inside its bounds. So do the names, which
promise the status (`bad-*`: a 4xx): GET /model/training-data is `model-training-data` where the
manifest publishes training points, `bad-training-data-not-published` (a 404) where it does not.

    python scripts/generate_events.py [--model model_artifacts/pretrained-model.npz]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = ROOT / "events"
sys.path.insert(0, str(ROOT))

from handler.api.openapi import example_points  # noqa: E402
from handler.gp.artifact import Manifest, PackagedArtifact  # noqa: E402

# GET /model/training-data's event, by whether the manifest publishes training points: only one is written.
TRAINING_DATA_EVENTS = {True: "model-training-data", False: "bad-training-data-not-published"}


def cases(manifest: Manifest) -> dict[str, tuple[str, str, str | None, str | None]]:
    """name: (method, path, body or None, route resource or None for an undeclared path)."""
    single, *others = example_points(manifest, 3)
    first, last = manifest.features[0], manifest.features[-1]
    low, high = manifest.bounds[-1]
    far_off = float(f"{high + 5 * (high - low):.4g}")
    training_data = TRAINING_DATA_EVENTS[manifest.published_training_data is not None]
    return {
        "predict": ("POST", "/predict", json.dumps(single), "/predict"),
        "predict-batch": ("POST", "/predict", json.dumps([single, *others]), "/predict"),
        "health": ("GET", "/health", None, "/health"),
        "model": ("GET", "/model", None, "/model"),
        training_data: ("GET", "/model/training-data", None, "/model/training-data"),
        "sensitivity": (
            "POST",
            "/sensitivity",
            json.dumps({"n": 1024, "posterior_samples": 20, "seed": 1}),
            "/sensitivity",
        ),
        "propagate": (
            "POST",
            "/propagate",
            json.dumps({"n": 4096, "quantiles": [0.05, 0.5, 0.95], "seed": 1}),
            "/propagate",
        ),
        "suggest": (
            "POST",
            "/suggest",
            json.dumps({"q": 5, "acquisition": "integrated_variance", "seed": 1}),
            "/suggest",
        ),
        "bad-missing-field": (
            "POST",
            "/predict",
            json.dumps({k: v for k, v in single.items() if k != last}),
            "/predict",
        ),
        "bad-boolean-value": ("POST", "/predict", json.dumps({**single, first: True}), "/predict"),
        "bad-invalid-json": ("POST", "/predict", json.dumps(single)[:-8], "/predict"),
        "bad-outside-domain": ("POST", "/predict", json.dumps({**single, last: far_off}), "/predict"),
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "model_artifacts" / "pretrained-model.npz")
    args = parser.parse_args()
    manifest = PackagedArtifact(args.model).fetch_manifest()
    written = cases(manifest)
    for stale in set(TRAINING_DATA_EVENTS.values()) - set(written):  # the previous model's, promising otherwise
        (EVENTS_DIR / f"{stale}.json").unlink(missing_ok=True)
    for name, (method, path, body, resource) in written.items():
        event = sam_event(method, path, body)
        if body is None:
            event["body"], event["isBase64Encoded"] = None, False
        event["resource"] = event["requestContext"]["resourcePath"] = resource or path
        event["pathParameters"] = None
        (EVENTS_DIR / f"{name}.json").write_text(json.dumps(event, indent=2) + "\n")
        print(f"events/{name}.json: {method} {path}")


if __name__ == "__main__":
    main()
