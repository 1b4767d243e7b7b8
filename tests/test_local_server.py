"""scripts/local_lambda.py: the handler under AWS's Runtime Interface Emulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import LazyModel
from scripts import local_lambda
from tests.conftest import (
    DEPLOYED_MODEL,
    FEATURES,
    LOCAL_LAMBDA,
    PARK_PICKLE,
    PARK_POSTERIOR,
    env_vars_file,
    wait_for_job,
)
from tests.events import api_event, lambda_context, response_json

ROOT = Path(__file__).resolve().parent.parent
POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}

pytestmark = pytest.mark.slow


def run_script(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(
        [sys.executable, str(LOCAL_LAMBDA), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def gpy_predict(model_path: Path, point: dict[str, float]) -> tuple[float, float]:
    with model_path.open("rb") as handle:
        mean, variance = pickle.load(handle).predict(np.array([[point[k] for k in ("x1", "x2", "x3", "x4")]]))
    return float(mean[0, 0]), float(variance[0, 0])


def test_the_seeds_curl_command_works_verbatim(local_server, tiny_model_path: Path, tmp_path: Path):
    # given the README's input file and curl command
    base_url, _ = local_server
    (tmp_path / "input.json").write_text(json.dumps(POINT))
    command = f'curl -s -X POST {base_url}/predict -H "Content-Type: application/json" -d @input.json'
    # when
    output = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    # then
    body = json.loads(output)
    mean, variance = gpy_predict(tiny_model_path, POINT)
    assert body["mean"] == pytest.approx(mean, rel=1e-7)
    assert body["variance"] == pytest.approx(variance, rel=1e-7)


def test_a_body_without_content_type_and_a_batch_are_answered(local_server):
    base_url, _ = local_server
    single = httpx.post(f"{base_url}/predict", content=json.dumps(POINT), timeout=30)
    batch = httpx.post(f"{base_url}/predict", json=[POINT, {**POINT, "x1": 0.2}], timeout=30)
    assert single.status_code == 200
    assert batch.status_code == 200
    assert batch.json()[0] == pytest.approx(single.json())
    assert batch.headers["content-type"] == "application/json"


def test_errors_cross_http_as_json(local_server):
    base_url, _ = local_server
    response = httpx.post(f"{base_url}/predict", content='{"x1": 0.5,', timeout=30)
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "body"
    response = httpx.post(f"{base_url}/predict", json={**POINT, "x4": "high"}, timeout=30)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "x4"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"])
def test_a_method_the_path_does_not_take_gets_405_with_allow(local_server, method: str):
    base_url, _ = local_server
    response = httpx.request(method, f"{base_url}/predict", timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    if method != "HEAD":
        assert response.json()["details"][0]["field"] == "method"


def test_a_body_that_is_not_utf8_gets_400_not_a_gateway_error(local_server):
    base_url, _ = local_server
    response = httpx.post(f"{base_url}/predict", content=b'{"x1": "\xff"}', timeout=30)
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "body"


def template_paths() -> list[str]:
    _, api, _, _ = local_lambda.load_functions(ROOT / "template.yaml")
    return sorted({route.path for route in api.routes})


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_undeclared_path_gets_404_naming_the_routes_and_what_api_gateway_answers(local_server, method: str):
    # given a mistyped path (deployed, API Gateway answers 403 Missing Authentication Token before Lambda is
    # reached, as sam local start-api does: it reads as a problem with the key)
    base_url, _ = local_server
    # when
    response = httpx.request(method, f"{base_url}/predictions", json=POINT, timeout=30)
    # then locally it is a 404 that names the path, every route the template declares, and the deployed answer
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["routes"] == template_paths()
    assert "/predict" in body["routes"]
    assert body["error"] == f"no route {method} /predictions"
    [detail] = body["details"]
    assert detail["field"] == "path"
    assert detail["message"].startswith("/predictions is not a path of this API: it serves ")
    assert all(path in detail["message"] for path in body["routes"])
    assert '403 {"message": "Missing Authentication Token"}' in detail["message"]


def test_concurrent_requests_are_all_answered_by_the_warm_pool(local_server):
    # given more concurrent callers than environments
    base_url, log = local_server
    points = [{**POINT, "x1": x} for x in np.linspace(0.05, 0.95, 24)]
    # when
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda p: httpx.post(f"{base_url}/predict", json=p, timeout=60), points))
    # then every one succeeds, each with its own answer
    assert [r.status_code for r in responses] == [200] * 24
    means = [r.json()["mean"] for r in responses]
    assert len(set(means)) == 24
    # and no environment started cold twice: at most one init each for the API's two, the two job functions' two
    # each (which the job tests sharing this server warm), the explorer function's two (the page's tests) and the
    # registry admin function's two (the registry's tests)
    assert log.read_text().count("Init Duration") <= 2 + 2 * 2 + 2 + 2


def test_invoke_runs_an_event_file_like_sam_local_invoke():
    # given the sample event's point (SAM's events carry the body base64-encoded), for the deployed model
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import load_model

    event = json.loads((ROOT / "events" / "predict.json").read_text())
    point = json.loads(base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"])
    deployed = load_model(PackagedArtifact(DEPLOYED_MODEL))
    # when
    result = run_script("invoke", "-e", "events/predict.json")
    # then the response is on stdout, the runtime's REPORT line on stderr, the answer the model's own
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 200
    answer = json.loads(response["body"])
    first = answer if len(deployed.manifest.outputs) == 1 else answer[deployed.manifest.outputs[0]]
    expected = deployed.model.predict(np.array([[point[f] for f in deployed.manifest.features]])).mean[0, 0]
    assert first["mean"] == pytest.approx(expected, rel=1e-9)
    assert "REPORT RequestId:" in result.stderr
    assert "Memory Size: 1769 MB" in result.stderr, "the template's MemorySize reaches the runtime"


def limits_template(tmp_path: Path, timeout_s: int, memory_mb: int) -> Path:
    (tmp_path / "limits.py").write_text(
        textwrap.dedent(
            """
            import time

            def sleep(event, context):
                time.sleep(event["seconds"])
                return {"statusCode": 200, "body": "done"}

            def allocate(event, context):
                block = bytearray(event["megabytes"] * 1024 * 1024)
                return {"statusCode": 200, "body": str(len(block))}
            """
        )
    )
    template = tmp_path / "template.yaml"
    template.write_text(
        textwrap.dedent(
            f"""
            AWSTemplateFormatVersion: "2010-09-09"
            Transform: AWS::Serverless-2016-10-31
            Globals:
              Function:
                Runtime: python3.13
                Timeout: {timeout_s}
                MemorySize: {memory_mb}
            Resources:
              Sleep:
                Type: AWS::Serverless::Function
                Properties:
                  CodeUri: .
                  Handler: limits.sleep
              Allocate:
                Type: AWS::Serverless::Function
                Properties:
                  CodeUri: .
                  Handler: limits.allocate
            """
        )
    )
    return template


def test_the_templates_timeout_is_enforced(tmp_path: Path):
    # given a function with a 1 s timeout that sleeps for 5 s
    template = limits_template(tmp_path, timeout_s=1, memory_mb=256)
    (tmp_path / "event.json").write_text('{"seconds": 5}')
    # when
    result = run_script(
        "--template", str(template), "--function", "Sleep", "invoke", "-e", str(tmp_path / "event.json")
    )
    # then the invocation was stopped at the timeout: it never returned its answer (no clock: a loaded machine
    # may take seconds to start the emulator, which says how long the function ran)
    assert "Task timed out after 1.00 seconds" in result.stdout
    assert "done" not in result.stdout


def test_the_templates_memory_size_is_enforced(tmp_path: Path):
    # given a 256 MB function that tries to hold 512 MB
    template = limits_template(tmp_path, timeout_s=10, memory_mb=256)
    (tmp_path / "big.json").write_text('{"megabytes": 512}')
    (tmp_path / "small.json").write_text('{"megabytes": 16}')
    # when
    big = run_script("--template", str(template), "--function", "Allocate", "invoke", "-e", str(tmp_path / "big.json"))
    small = run_script(
        "--template", str(template), "--function", "Allocate", "invoke", "-e", str(tmp_path / "small.json")
    )
    # then
    assert json.loads(big.stdout)["errorType"] == "MemoryError"
    assert json.loads(small.stdout) == {"statusCode": 200, "body": str(16 * 1024 * 1024)}


def max_memory_used_mb(report: str) -> int:
    (line,) = [line for line in report.splitlines() if line.startswith("REPORT RequestId:")]
    assert "Memory Size: 1024 MB" in line
    return int(re.search(r"Max Memory Used: (\d+) MB", line)[1])  # type: ignore[index]


def test_report_lines_give_the_runtimes_peak_memory_not_the_memory_size(tmp_path: Path):
    # given a 1024 MB function run once holding 16 MB, once 400 MB (bytearray zero-fills: every page is touched)
    template = limits_template(tmp_path, timeout_s=10, memory_mb=1024)
    (tmp_path / "small.json").write_text('{"megabytes": 16}')
    (tmp_path / "big.json").write_text('{"megabytes": 400}')
    # when
    small = run_script(
        "--template", str(template), "--function", "Allocate", "invoke", "-e", str(tmp_path / "small.json")
    )
    big = run_script("--template", str(template), "--function", "Allocate", "invoke", "-e", str(tmp_path / "big.json"))
    # then each REPORT line says what its runtime peaked at: the interpreter plus the block, under the memory size
    small_mb, big_mb = max_memory_used_mb(small.stderr), max_memory_used_mb(big.stderr)
    assert 16 < small_mb < 1024 - 400, small.stderr
    # the same runtime and code, 384 MB more held: the peaks differ by that, to the interpreter's own noise
    assert big_mb - small_mb == pytest.approx(400 - 16, abs=16), (small_mb, big_mb)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's server as `serve` starts it (scripts/local_jobs.py) on a free loopback port, with a bucket `uploads`."""
    port, process = local_lambda.start_on_free_port(
        lambda port: subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "local_jobs.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        timeout_s=30,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3_client(endpoint).create_bucket(Bucket="uploads")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
    )


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/csv"],
)
@pytest.mark.parametrize(
    "body", [b"x1,x2\n0.5,0.25\n", b"key=1&file=2", b"\x93NUMPY\x01\x00\xff\xfe not UTF-8", b""], ids=repr
)
def test_a_presigned_put_keeps_its_bytes_and_content_type_whatever_they_are(
    s3_endpoint: str, content_type: str | None, body: bytes
):
    # given a bucket on the local moto server and a presigned PUT URL, as a job's upload gets
    s3 = s3_client(s3_endpoint)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": "uploads", "Key": "points"}, ExpiresIn=60)
    # when it is PUT as urllib sends it (without a Content-Type header of its own: application/x-www-form-urlencoded)
    request = urllib.request.Request(url, data=body, method="PUT")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    # then S3 holds the bytes as sent, and the type the caller said
    stored = s3.get_object(Bucket="uploads", Key="points")
    assert stored["Body"].read() == body
    assert stored["ContentType"] == (content_type or "application/x-www-form-urlencoded")


@pytest.mark.parametrize("upload_format", ["csv", "npy"])
def test_a_file_put_with_urllibs_default_content_type_runs_as_a_job(local_server, upload_format: str):
    # given an upload job and its points as a file
    base_url, _ = local_server
    job = httpx.post(f"{base_url}/jobs?format=npy", json={"upload": {"format": upload_format}}, timeout=30).json()
    points = np.random.default_rng(14).uniform(0, 1, (50, 4))
    if upload_format == "csv":
        content = (",".join(FEATURES) + "\n" + "\n".join(",".join(map(repr, row)) for row in points.tolist())).encode()
    else:
        buffer = io.BytesIO()
        np.save(buffer, points)
        content = buffer.getvalue()
    # when it is PUT with urllib as a new user would (Content-Type: application/x-www-form-urlencoded), and started
    upload = urllib.request.Request(job["upload"]["url"], data=content, method="PUT")
    with urllib.request.urlopen(upload, timeout=30) as put:
        assert put.status == 200
    started = httpx.post(f"{base_url}/jobs/{job['id']}/start", timeout=30)
    # then the job runs on the bytes as sent: every point, in order, predicted as /predict predicts it
    assert started.status_code == 202, started.text
    done = wait_for_job(base_url, job["id"])
    assert done["status"] == "SUCCEEDED", done
    results = np.load(io.BytesIO(httpx.get(done["results"]["url"], timeout=60).content))
    np.testing.assert_array_equal(np.column_stack([results[name] for name in FEATURES]), points)
    expected = httpx.post(
        f"{base_url}/predict", json={k: points[:, i].tolist() for i, k in enumerate(FEATURES)}, timeout=60
    )
    np.testing.assert_allclose(results["y_mean"], expected.json()["mean"], rtol=1e-12)


def test_without_the_emulator_the_handler_runs_in_process_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # given a machine where the emulator cannot run (and this process's handler imported as every test has it:
    # importing it first under the function's environment would leave its settings to the tests that follow)
    import handler.app  # noqa: F401

    monkeypatch.setattr(local_lambda, "emulator_binary", lambda: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(sys, "path", list(sys.path))
    config, _ = local_lambda.load_function(
        ROOT / "template.yaml", env_vars_file=env_vars_file(tmp_path, tiny_model_path)
    )
    # when (events/ are the deployed model's, which this process's handler serves)
    environment = local_lambda.start_environment(config)
    response = json.loads(environment.invoke((ROOT / "events" / "predict.json").read_bytes()))
    # then
    assert isinstance(environment, local_lambda.InProcessEnvironment)
    assert "cannot run here; calling the handler in-process" in caplog.text
    assert response["statusCode"] == 200


def test_an_admin_key_that_is_also_a_callers_key_is_refused_in_one_line():
    result = run_script("serve", "--port", "0", "--api-key", "reader,shared", "--admin-api-key", "shared")
    assert result.returncode == 2
    assert result.stderr.startswith("local_lambda: error: --admin-api-key must differ from each --api-key")
    assert len(result.stderr.strip().splitlines()) == 1


def test_invoke_with_a_missing_event_file_says_so_in_one_line():
    result = run_script("invoke", "-e", "events/nope.json")
    assert result.returncode == 2
    assert result.stderr.startswith("local_lambda: error: event file events/nope.json does not exist (available: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def process_start_time(pid: int) -> str | None:
    """The process's start time (ticks since boot, /proc/PID/stat field 22): with the PID, names one process even
    after its PID is reused; None once it has gone and been reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def wait_until_healthy(base_url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=30).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{base_url}/health was not answered")


# How the server is told to stop: SIGTERM to it (a service manager, `kill`); Ctrl-C in a terminal (SIGINT to the
# whole foreground process group); SIGINT to it from a script that started it in the background (where the shell
# starts it with SIGINT ignored: the emulators went defunct, /predict answered 502 and the server ran on).
STOPS = {
    "sigterm": (signal.SIGTERM, {}),
    "ctrl-c": (signal.SIGINT, {"start_new_session": True}),
    "script-sigint": (signal.SIGINT, {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)}),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_serve_stops_quietly_and_leaves_no_process_behind(tiny_posterior_path: Path, tmp_path: Path, how: str):
    # given a server with jobs (moto, pollers, the job functions' environments), its API function warm
    signum, popen_options = STOPS[how]
    log = tmp_path / "serve.log"
    env_file = env_vars_file(tmp_path, tiny_posterior_path)
    process, base_url = local_lambda.spawn_serve(
        log, "-w", "1", "--job-workers", "1", env_vars=env_file, **popen_options
    )
    try:
        wait_until_healthy(base_url)
        assert httpx.post(f"{base_url}/predict", json=POINT, timeout=60).status_code == 200
        while log.read_text().count("REPORT RequestId") < 2:  # both answers gone and reported
            time.sleep(0.1)
        children = {pid: process_start_time(pid) for pid in local_lambda._descendants(process.pid)}
        lines_before = len(log.read_text().splitlines())
        # when it is told to stop
        started = time.monotonic()
        if popen_options.get("start_new_session"):
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        process.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    after = output.splitlines()[lines_before:]
    # then it stopped well within the 11 s it took when the terminal's Ctrl-C reached every child at once (a
    # bound for a loaded CI machine, not a speed target), in one line, without a traceback
    assert (process.returncode, took < 6) == (0, True), (process.returncode, took, output)
    assert "Traceback" not in output
    assert after[-1:] == ["stopped"], after
    assert len(after) <= 3, after  # "stopped", and at most an emulator's own line or two
    # and every process it started (moto, the emulators, their runtimes) has gone and been reaped
    assert len(children) >= 1 + 3 + 1, children  # moto, one emulator per function, the API's warm runtime
    left = {pid for pid, start in children.items() if start is not None and process_start_time(pid) == start}
    assert left == set(), {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left}


def test_a_request_in_flight_at_ctrl_c_gets_a_whole_answer_and_no_traceback_is_printed(
    tiny_posterior_path: Path, tmp_path: Path
):
    # given a server busy with a long analysis (a terminal's Ctrl-C reaches its whole process group)
    log = tmp_path / "serve.log"
    process, base_url = local_lambda.spawn_serve(
        log, "-w", "1", "--no-jobs", env_vars=env_vars_file(tmp_path, tiny_posterior_path), start_new_session=True
    )
    answers: list[httpx.Response | Exception] = []
    try:
        wait_until_healthy(base_url)
        starts = log.read_text().count("START RequestId")
        body = {"n": 8192, "posterior_samples": 30, "seed": 1}  # within the test servers' budget (conftest)

        def ask() -> None:
            try:
                answers.append(httpx.post(f"{base_url}/sensitivity", json=body, timeout=60))
            except httpx.HTTPError as exc:
                answers.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        while log.read_text().count("START RequestId") == starts:  # the runtime has the request
            time.sleep(0.05)
        # when Ctrl-C stops it mid-request
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        asking.join(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # then the caller got a whole answer: the analysis, or the server's 503 saying it is stopping
    [answer] = answers
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code in (200, 503), answer.text
    if answer.status_code == 503:
        assert answer.json()["error"] == "the local server is stopping"
    # and the server stopped cleanly, printing no runtime's traceback
    output = log.read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output


def test_the_local_server_can_require_an_api_key_as_the_deployed_api_does(tiny_model_path: Path, tmp_path: Path):
    from tests.conftest import start_server

    log = tmp_path / "serve.log"
    process, base_url = start_server(env_vars_file(tmp_path, tiny_model_path), log, "-w", "1", "--api-key", "s3cret")
    try:
        url = f"{base_url}/predict"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base_url}/health", timeout=30)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        without = httpx.post(url, json=POINT, timeout=60)
        wrong = httpx.post(url, json=POINT, headers={"x-api-key": "guess"}, timeout=60)
        right = httpx.post(url, json=POINT, headers={"x-api-key": "s3cret"}, timeout=60)
        assert (without.status_code, wrong.status_code, right.status_code) == (403, 403, 200)
        assert without.json() == {"message": "Forbidden"}
        # and a path the API does not serve is a 404 naming the routes, key or not (deployed: 403 either way)
        unknown = httpx.post(f"{base_url}/predictions", json=POINT, timeout=60)
        assert unknown.status_code == 404
        assert "/predict" in unknown.json()["routes"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def shipped_park_model() -> Path:
    """The README's examples are the packaged Park model's; `make package-model` may have replaced it."""
    if json.loads(manifest_path_for(DEPLOYED_MODEL).read_text())["name"] != "park1991":
        pytest.skip("model_artifacts/ holds another model than the README's examples")
    return DEPLOYED_MODEL


def test_the_readmes_predict_and_sample_examples_are_what_the_shipped_model_answers(monkeypatch: pytest.MonkeyPatch):
    # given the README's /predict answer for one point and its /sample command with the first two draws answered
    readme = (ROOT / "README.md").read_text()
    point = json.loads(re.search(r"```json\n(\{\"x1\": 0\.51[^\n]*\})\n```\n→ `200 ", readme)[1])  # type: ignore[index]
    documented = json.loads(re.search(r'→ `200 (\{"mean": [^`]*\})`', readme)[1])  # type: ignore[index]
    sample = re.search(r"\$ curl -X POST \"\$URL/sample\" -d '([^']*)'\n(.*)\n", readme)
    assert sample is not None
    first_two = re.search(r'"samples":\[(\[[^]]*\]),(\[[^]]*\]),', sample[2])
    assert first_two is not None
    draws = [json.loads(first_two[1]), json.loads(first_two[2])]
    from handler import app

    model_path = shipped_park_model()
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_path)))
    # when the service answers them
    answer = response_json(app.lambda_handler(api_event(body=point), lambda_context()))
    sampled = response_json(app.lambda_handler(api_event(path="/sample", raw_body=sample[1]), lambda_context()))
    # then to the rounding BLAS leaves on another machine: a variance this small is what is left of the prior
    # variance (n_train products of it, each rounded), so it moves by ~n_train * eps * prior / variance relative
    with PARK_PICKLE.open("rb") as handle:  # the same model as GPy pickled it
        gp = pickle.load(handle)
    x = np.array([[point[name] for name in FEATURES]])
    prior = float(gp.kern.Kdiag(x)[0] * gp.normalizer.std[0] ** 2)
    variance_rtol = gp.X.shape[0] * np.finfo(float).eps * prior / answer["variance"]
    assert answer["mean"] == pytest.approx(documented["mean"], rel=1e-9)
    assert answer["variance"] == pytest.approx(documented["variance"], rel=variance_rtol)
    # and the seeded draws are the documented ones: the mean's rounding plus the factor's on a draw's spread
    got = np.array(sampled["samples"][:2])
    spread = np.abs(got - got.mean(axis=0)).max()
    np.testing.assert_allclose(got, draws, rtol=1e-9, atol=variance_rtol * spread)


def test_the_start_log_names_the_served_model_once_and_the_routes_in_one_line(local_server, tiny_posterior_path: Path):
    # given the server on the tiny Park model's posterior file (its log, from the start)
    _, log = local_server
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    lines = log.read_text().splitlines()
    # then one line says which model is served, what it is and where it came from
    [model_line] = [line for line in lines if line.startswith("model: ")]
    assert model_line.startswith(f"model: {manifest['name']}/{manifest['version']}, exact posterior file (")
    assert f"features {', '.join(manifest['features'])}; outputs {', '.join(manifest['outputs'])};" in model_line
    assert f"from {tiny_posterior_path}" in model_line
    assert f"sha256 {manifest['sha256'][:12]}" in model_line
    # and one line, not one per route, names the routes
    assert not any(line.startswith("Mounting") for line in lines)
    [routes_line] = [line for line in lines if line.startswith("routes: ")]
    per_function = dict(re.findall(r"(\w+Function): \d+ paths \(([^)]*)\)", routes_line))
    assert set(per_function) == {"PredictFunction", "ExplorerFunction", "RegistryAdminFunction"}
    assert sorted(p for paths in per_function.values() for p in paths.split()) == template_paths()
    # and one line says where the model registry is
    [registry_line] = [line for line in lines if line.startswith("model registry: ")]
    assert registry_line == "model registry: bucket gpr-local-registry and table gpr-local-registry on moto, writes on"


def packaged_copy(folder: Path) -> Path:
    """A copy of the Park posterior file and its manifest, as model_artifacts/ holds one: free to repackage."""
    for source in (PARK_POSTERIOR, manifest_path_for(PARK_POSTERIOR)):
        (folder / source.name).write_bytes(source.read_bytes())
    return folder / PARK_POSTERIOR.name


def repackage(model_path: Path, mtime_s: float, **changes: str) -> None:
    """Rewrite the manifest as packaging another model would (no changes: the original's bytes), with its own
    modification time."""
    path, original = manifest_path_for(model_path), manifest_path_for(PARK_POSTERIOR).read_text()
    path.write_text(json.dumps({**json.loads(original), **changes}) if changes else original)
    os.utime(path, (mtime_s, mtime_s))


def test_a_change_of_the_packaged_model_is_warned_once_per_change(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # given a server's watch on the model it started with
    model_path = packaged_copy(tmp_path)
    watch = local_lambda.ModelWatch(manifest_path_for(model_path))
    caplog.set_level("INFO", logger="local_lambda")
    watch.check()
    assert caplog.records == [], "nothing changed: nothing said"
    # when another model is packaged in its place, and checked twice
    repackage(model_path, 1_000_000_000, name="mymodel", version="2")
    watch.check()
    watch.check()
    # then one warning names both models and what to do
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "the packaged model changed since start (park1991/1 -> mymodel/2): restart make serve to serve it",
        )
    ]
    # and each further change is warned once more; the model served coming back is said once too
    repackage(model_path, 1_000_000_100, name="mymodel", version="3")
    watch.check()
    repackage(model_path, 1_000_000_200)
    watch.check()
    watch.check()
    assert [r.getMessage() for r in caplog.records[1:]] == [
        "the packaged model changed since start (park1991/1 -> mymodel/3): restart make serve to serve it",
        "the packaged model is again the one served (park1991/1)",
    ]


def test_a_model_served_through_gpy_or_missing_is_described_as_such(tiny_model_path: Path, tmp_path: Path):
    # given a pickle packaged for the GPy route, and a path where nothing is packaged
    # when they are described, as `serve` does at start
    pickle_level, pickle_line = local_lambda.describe_model(tiny_model_path, ROOT)
    missing_level, missing_line = local_lambda.describe_model(tmp_path / "pretrained-model.npz", ROOT)
    # then
    assert pickle_level == logging.INFO
    assert ", GPy pickle (GPy.models.GPRegression, " in pickle_line
    assert "training data published: inputs;" in pickle_line
    assert missing_level == logging.WARNING
    assert "model manifest pretrained-model.manifest.json is missing" in missing_line
    assert "the API answers 503" in missing_line


def test_a_signal_while_the_server_runs_ends_its_loop_rather_than_raising_into_a_request():
    # given the server's signal handler, armed, with the running HTTP server's shutdown registered
    stopper = local_lambda.Stopper()
    stopper.arm()
    stopped = threading.Event()
    stopper.shutdown = stopped.set
    # when SIGTERM arrives (CI once caught it inside socketserver's handling of a request, which swallowed an
    # exception raised there as that request's error: the server served on and never stopped)
    stopper(signal.SIGTERM, None)
    # then nothing is raised into whatever the thread was doing, and the loop is told to end
    assert stopped.wait(5)
    assert stopper.requested == "SIGTERM"


# The registry's routes (the shared design, issue 22): what each asks, and the function the template gives it to.
ADMIN_REQUESTS = [
    ("POST", "/models/plant/versions"),
    ("POST", "/models/plant/versions/3/check"),
    ("PUT", "/models/plant/aliases/live"),
    ("POST", "/models/plant/aliases/live/rollback"),
    ("DELETE", "/models/plant/versions/3"),
]
READ_REQUESTS = [
    ("GET", "/models"),
    ("GET", "/models/plant"),
    ("POST", "/models/plant/predict"),
    ("POST", "/models/plant@canary/sample"),
    ("GET", "/models/plant%40live/manifest"),
    ("POST", "/models/plant/versions/3/predict"),
    ("GET", "/models/plant/versions/3/training-data"),
    ("POST", "/models/plant/jobs"),
    ("POST", "/v2/repository/index"),
]


class RecordingPool:
    """A function's environment pool that answers with its function's name and keeps the events it was sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict] = []

    def invoke(self, function_identifier: str, event: str, stdout, stderr, **_) -> None:
        self.events.append(json.loads(event))
        stdout.write_str(json.dumps({"statusCode": 200, "headers": {"X-Function": self.name}, "body": ""}))


def test_the_registry_routes_reach_their_functions_pools_with_the_admin_keys_id():
    from samcli.lib.utils.stream_writer import StreamWriter
    from samcli.local.apigw.local_apigw_service import LocalApigwService

    # given the local API as `serve --api-key reader --admin-api-key admin` builds it, each function's pool recording
    _, api, _, keyless_paths = local_lambda.load_functions(ROOT / "template.yaml")
    pools = {name: RecordingPool(name) for name in {route.function_name for route in api.routes}}
    router = local_lambda.FunctionRouter(pools, ["reader"], admin_api_key="admin")
    service = LocalApigwService(
        api=api, lambda_runner=router, port=0, host="127.0.0.1", stderr=StreamWriter(io.StringIO())
    )
    service.create()
    local_lambda._require_api_key(service, router.api_keys, keyless_paths)
    client = service._app.test_client()
    # when the admin calls the write routes, and a reader and the admin the read routes
    for method, path in ADMIN_REQUESTS:
        answer = client.open(path, method=method, headers={"x-api-key": "admin"}, json={})
        # then the writes reach the admin function's own pool, told the admin key's id
        assert (answer.status_code, answer.headers.get("X-Function")) == (200, "RegistryAdminFunction"), path
        assert pools["RegistryAdminFunction"].events[-1]["requestContext"]["identity"]["apiKeyId"] == "local-admin"
    for method, path in READ_REQUESTS:
        for key in ("reader", "admin"):
            answer = client.open(path, method=method, headers={"x-api-key": key}, json={})
            # and the reads the API function's, with each caller's key id (the admin key is a key like any other)
            assert (answer.status_code, answer.headers.get("X-Function")) == (200, "PredictFunction"), path
            identity = pools["PredictFunction"].events[-1]["requestContext"]["identity"]
            assert (identity["apiKeyId"] == "local-admin") is (key == "admin"), (path, key)
    # and a write without a key is refused before any function, as API Gateway does
    calls = sum(len(pool.events) for pool in pools.values())
    assert client.post("/models/plant/versions", json={}).status_code == 403
    assert sum(len(pool.events) for pool in pools.values()) == calls


@pytest.fixture(scope="module")
def template_resources() -> dict:
    from samcli.yamlhelper import yaml_parse

    return yaml_parse((ROOT / "template.yaml").read_text())["Resources"]


def test_serve_creates_the_registry_on_moto_as_the_template_declares_it_and_tells_every_function(
    template_resources: dict,
):
    # given the template's functions, and moto's server with the jobs' resources as `serve` starts it
    configs, _, _, _ = local_lambda.load_functions(ROOT / "template.yaml")
    jobs = local_lambda.LocalJobs.start()
    try:
        # when the server configures the functions it runs
        served = local_lambda.local_configs(configs, jobs, admin_api_key=None)
        # then the registry's table is on moto, keyed as the template's RegistryTable, without expiry
        dynamodb = boto3.client("dynamodb", **jobs.client_args)
        table = dynamodb.describe_table(TableName="gpr-local-registry")["Table"]
        declared = template_resources["RegistryTable"]["Properties"]
        assert table["KeySchema"] == declared["KeySchema"]
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(declared["AttributeDefinitions"], key=str)
        assert table["BillingModeSummary"]["BillingMode"] == declared["BillingMode"]
        ttl = dynamodb.describe_time_to_live(TableName="gpr-local-registry")["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "DISABLED"
        # and its bucket, beside the jobs' one
        buckets = {b["Name"] for b in boto3.client("s3", **jobs.client_args).list_buckets()["Buckets"]}
        assert {"gpr-local-registry", "gpr-local-jobs"} <= buckets
        # and every function is told them (as the template's Globals do), with writes on and no admin key
        assert set(served) == set(configs)
        for name, config in served.items():
            variables = config.environment
            assert variables["REGISTRY_BUCKET"] == variables["REGISTRY_TABLE"] == "gpr-local-registry", name
            assert variables["REGISTRY_WRITES"] == "true", name
            assert variables["REGISTRY_ADMIN_KEY_ID"] == "", name
            assert variables["AWS_ENDPOINT_URL"] == jobs.endpoint, name
    finally:
        jobs.stop(time.monotonic() + 5)


def test_without_jobs_there_is_no_registry_and_no_made_up_resource_or_key(template_resources: dict):
    # given the template's functions, whose registry variables name resources that exist only once deployed
    configs, _, _, _ = local_lambda.load_functions(ROOT / "template.yaml")
    assert configs["PredictFunction"].environment["REGISTRY_BUCKET"] == "RegistryBucket"
    # when `serve --no-jobs` configures them, with and without an admin key
    for admin_api_key, admin_key_id in ((None, ""), ("admin", "local-admin")):
        served = local_lambda.local_configs(configs, None, admin_api_key)
        # then no function is given a registry (the packaged model serves as before), nor a name that is a template
        # resource's logical id, and each knows the admin key's id, if any
        for name, config in served.items():
            variables = config.environment
            assert not {"REGISTRY_BUCKET", "REGISTRY_TABLE"} & set(variables), name
            registry_values = {v for k, v in variables.items() if k.startswith("REGISTRY_")}
            assert not registry_values & set(template_resources), name
            assert variables["REGISTRY_ADMIN_KEY_ID"] == admin_key_id, name
