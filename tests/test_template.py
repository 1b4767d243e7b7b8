"""template.yaml checked by the real SAM CLI and cfn-lint, and built with `sam build`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from samcli.yamlhelper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024


def tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # sam build for python3.13 looks for `python3.13` on PATH: this venv's interpreter is one.
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml_parse(TEMPLATE.read_text())


def test_sam_validate_lint_passes():
    result = tool("sam", "validate", "--lint", "--template", str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_cfn_lint_passes():
    result = tool("cfn-lint", str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_function_runs_python_313_on_arm64_with_powertools_settings(template: dict):
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL"} <= set(function_globals["Environment"]["Variables"])
    assert function_globals["Timeout"] < 29, "below API Gateway's integration timeout"
    function = template["Resources"]["PredictFunction"]["Properties"]
    assert function["Handler"] == "handler.app.lambda_handler"


def test_the_api_declares_exactly_the_handlers_paths_with_any_method(template: dict):
    from handler.app import app

    events = template["Resources"]["PredictFunction"]["Properties"]["Events"].values()
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events if e["Type"] == "Api"}
    assert declared == {("any", route.path) for route in app._static_routes}
    assert "{proxy+}" not in TEMPLATE.read_text()


def test_the_stage_is_throttled_and_the_url_is_an_output(template: dict):
    settings = template["Resources"]["PredictionApi"]["Properties"]["MethodSettings"][0]
    assert {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(settings)
    assert "execute-api" in str(template["Outputs"]["ApiUrl"]["Value"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sam_build_packages_handler_model_and_runtime_dependencies_under_the_size_limit(tmp_path: Path):
    # when
    build_dir = tmp_path / "build"
    cache_dir = tmp_path / "cache"
    result = tool(
        "sam", "build", "--template", str(TEMPLATE), "--build-dir", str(build_dir), "--cache-dir", str(cache_dir),
        timeout=900,
    )  # fmt: skip
    # then
    assert result.returncode == 0, result.stdout + result.stderr
    package = build_dir / "PredictFunction"
    for needed in (
        "handler/app.py",
        "model_artifacts/pretrained-model.pkl",
        "model_artifacts/pretrained-model.manifest.json",
    ):
        assert (package / needed).is_file(), needed
    assert list(package.glob("numpy/_core/_multiarray_umath.cpython-313-aarch64-linux-gnu.so")), "arm64 wheels"
    assert list(package.glob("GPy/__init__.py"))
    assert not list(package.glob("pytest*")), "development tools stay out of the package"
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    assert size < LAMBDA_UNZIPPED_LIMIT_BYTES, f"{size / 2**20:.0f} MiB unzipped"
