"""A posterior file is served with numpy alone: no route imports GPy, paramz or scipy, or enters an unpickler.

Each check runs in a fresh process whose imports of those packages (and of the service's GPy route) fail loudly
and are recorded, and whose pickle loaders raise: a route that reached for any of them could not answer 200.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROBE = r"""
import importlib.abc, json, pickle, sys

FORBIDDEN = ("GPy", "paramz", "scipy", "handler.gp.unpickling", "handler.gp.gpy_model", "handler.gp.from_gpy")
attempts = []


class Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN or name in FORBIDDEN:
            attempts.append(name)
            raise ImportError(f"{name} is forbidden here")
        return None


sys.meta_path.insert(0, Forbidden())


def refuse(*args, **kwargs):
    attempts.append("unpickling")
    raise RuntimeError("an unpickler was entered")


class Refused:
    __init__ = refuse


# Unpicklers that refuse to be made but are still classes: a library that subclasses one as it is imported (pandas,
# which pyarrow imports where it is installed) imports as it would anywhere.
pickle.load = pickle.loads = refuse
pickle.Unpickler = type("Unpickler", (Refused, pickle.Unpickler), {})
pickle._Unpickler = type("_Unpickler", (Refused, pickle._Unpickler), {})

sys.path.insert(0, sys.argv[1])
from handler import app
from tests.events import api_event, lambda_context, response_json

manifest = app.model.manifest()
name, features = manifest.name, manifest.features
point = {f: float(sum(b) / 2) for f, b in zip(features, manifest.bounds.tolist())}
columns = {f: [float(b[0]), float(sum(b) / 2), float(b[1])] for f, b in zip(features, manifest.bounds.tolist())}
infer = {"inputs": [{"name": "input", "shape": [3, len(features)], "datatype": "FP64",
                     "data": [v for i in range(3) for v in (columns[f][i] for f in features)]}]}
calls = {
    "predict": ("POST", "/predict", point, None),
    "predict-batch": ("POST", "/predict", columns, None),
    "predict-latent-std-interval": (
        "POST", "/predict", [point, point], {"variance": "latent", "include": "std,interval"}
    ),
    "predict-gradient": ("POST", "/predict", columns, {"include": "gradient"}),
    "predict-covariance": ("POST", "/predict", columns, {"include": "covariance"}),
    "sample": ("POST", "/sample", {"points": columns, "samples": 5, "seed": 1}, None),
    "sample-observations": ("POST", "/sample", {"points": [point], "samples": 2, "target": "observations"}, None),
    "health": ("GET", "/health", None, None),
    "model": ("GET", "/model", None, None),
    "openapi": ("GET", "/openapi.json", None, None),
    "v2-server": ("GET", "/v2", None, None),
    "v2-ready": ("GET", f"/v2/models/{name}/ready", None, None),
    "v2-metadata": ("GET", f"/v2/models/{name}", None, None),
    "v2-infer": ("POST", f"/v2/models/{name}/infer", infer, None),
    "sensitivity": ("POST", "/sensitivity", {"n": 64, "posterior_samples": 2, "second_order": True, "seed": 1}, None),
    "propagate": (
        "POST", "/propagate",
        {"n": 64, "posterior_samples": 2, "thresholds": [1.0], "seed": 1,
         "inputs": {f: {"distribution": "truncnormal", "mean": sum(b) / 2, "std": (b[1] - b[0]) / 4, "low": b[0],
                        "high": b[1]} for f, b in zip(features, manifest.bounds.tolist())}},
        None,
    ),
    "suggest-ei": ("POST", "/suggest", {"q": 2, "acquisition": "expected_improvement", "goal": "maximize"}, None),
    "suggest-ivr": ("POST", "/suggest", {"q": 2, "acquisition": "integrated_variance", "pending": [point]}, None),
}
if manifest.published_training_data:  # elsewhere a 404, which needs no model at all
    calls["training-data"] = ("GET", "/model/training-data", None, None)
statuses = {}
for label, (method, path, body, query) in calls.items():
    event = api_event(method, path, body)
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
    statuses[label] = app.lambda_handler(event, lambda_context())["statusCode"]

# Jobs: the API submits inline points, the worker predicts them, the finisher assembles (moto's AWS in-process)
import os
from moto import mock_aws
for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ[variable] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
with mock_aws():
    import pytest
    from tests.jobs_harness import start_harness
    monkeypatch = pytest.MonkeyPatch()
    jobs = start_harness(monkeypatch, app.model, chunk_points=1_000)
    failures = []
    for source in jobs.sources:  # a failed invocation is retried after a visibility timeout: record it, not wait
        def invoke(event, call=source.invoke):
            try:
                response = call(event)
            except Exception as exc:
                failures.append(repr(exc)[:500])
                raise
            failures.extend((response or {}).get("batchItemFailures", []))
            return response
        source.invoke = invoke
    status, _, submitted = jobs.call("POST", "/jobs", {"points": [point] * 1_500})
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    statuses["jobs"] = status
    statuses["jobs-status"] = done["status"]
    monkeypatch.undo()

loaded = sorted({m.split(".")[0] for m in sys.modules} & {"GPy", "paramz", "scipy"})
print(json.dumps({"statuses": statuses, "attempts": attempts, "loaded": loaded, "job_failures": failures,
                  "gp_modules": sorted(m for m in sys.modules if m.startswith("handler.gp."))}))
"""


@pytest.fixture(scope="module")
def posterior_file_model(tiny_posterior_path: Path) -> Path:
    """The tiny Park model, packaged as the packaging command packages it: a posterior file."""
    from handler.gp.artifact import PackagedArtifact

    assert PackagedArtifact(tiny_posterior_path).fetch_manifest().format == "npz"
    assert tiny_posterior_path.suffix == ".npz"
    return tiny_posterior_path


@pytest.mark.slow
def test_no_route_imports_gpy_paramz_or_scipy_or_unpickles_for_a_posterior_file(posterior_file_model: Path):
    # given a fresh process serving a posterior file, where importing GPy, paramz, scipy or the GPy route fails
    env = {"PATH": "/usr/bin:/bin", "MODEL_PATH": str(posterior_file_model), "POWERTOOLS_METRICS_NAMESPACE": "t"}
    # when every route answers (predictions, options, samples, the model card, OpenAPI, V2, a job end to end)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # then each answered as usual, nothing reached for GPy, paramz, scipy or an unpickler, and none is loaded
    assert report["statuses"] == {
        **{label: 200 for label in report["statuses"] if label not in ("jobs", "jobs-status")},
        "jobs": 202,
        "jobs-status": "SUCCEEDED",
    }
    assert report["attempts"] == []
    assert report["job_failures"] == [], "the worker and finisher each succeed the first time"
    assert report["loaded"] == []
    assert "handler.gp.unpickling" not in report["gp_modules"]
