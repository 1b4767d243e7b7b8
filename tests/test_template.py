"""template.yaml checked by the real SAM CLI and cfn-lint, and built with `sam build`."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
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


def test_the_api_function_knows_its_own_timeout(template: dict):
    # given the API function's timeout (its own, else Globals') and the setting its work budgets derive from
    function = template["Resources"]["PredictFunction"]["Properties"]
    timeout = function.get("Timeout", template["Globals"]["Function"]["Timeout"])
    # then they agree: a budget derived from another timeout would be killed, or refuse what fits
    assert float(function["Environment"]["Variables"]["FUNCTION_TIMEOUT_SECONDS"]) == float(timeout)


def test_the_job_worker_and_the_api_know_the_workers_timeout(template: dict):
    # given the job worker's timeout, and the setting on it and on the API function that jobs' chunks are sized by
    worker = template["Resources"]["JobWorkerFunction"]["Properties"]
    timeout = worker.get("Timeout", template["Globals"]["Function"]["Timeout"])
    api = template["Resources"]["PredictFunction"]["Properties"]
    # then they agree: chunks sized for another timeout would be killed mid-chunk, or be smaller than they need be
    for function in (worker, api):
        assert float(function["Environment"]["Variables"]["JOB_WORKER_TIMEOUT_SECONDS"]) == float(timeout)


def test_the_api_declares_exactly_the_handlers_paths_with_any_method(template: dict):
    from handler.app import app

    events = template["Resources"]["PredictFunction"]["Properties"]["Events"].values()
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events if e["Type"] == "Api"}
    routes = (*app._static_routes, *app._dynamic_routes)
    assert declared == {("any", route.path.replace("<", "{").replace(">", "}")) for route in routes}
    assert "{proxy+}" not in TEMPLATE.read_text()


def test_the_explorer_function_declares_exactly_its_routes_with_get_and_head(template: dict):
    from handler.explorer_app import app

    function = template["Resources"]["ExplorerFunction"]["Properties"]
    assert function["Handler"] == "handler.explorer_app.lambda_handler"
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in function["Events"].values()}
    routes = (*app._static_routes, *app._dynamic_routes)
    assert declared == {(route.method.lower(), route.path.replace("<", "{").replace(">", "}")) for route in routes}
    assert {method for method, _ in declared} == {"get", "head"}
    assert {path for _, path in declared} == EXPLORER_PATHS


def model_statements(parameters: dict[str, str]) -> dict[str, list[dict]]:
    """Per function role, the statements on S3 objects other than the jobs' and the registry's buckets, as
    CloudFormation gets them."""
    found = {}
    for name, role in translated(parameters)["Resources"].items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        statements = [
            s for policy in role["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]
        ]
        found[name] = [
            s
            for s in statements
            if "s3:" in str(s["Action"])
            and not {"JobsBucket", "RegistryBucket"} & set(re.findall(r"\w+", json.dumps(s)))
        ]
    return found


def test_a_model_from_s3_grants_get_object_on_exactly_its_two_objects(template: dict, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # a packaged model: no S3 permission beyond the jobs bucket
    assert all(statements == [] for statements in model_statements({}).values())
    # when the URI is set, the two functions that load the model (the API and the job worker), and no other
    granted = model_statements({"ModelS3Uri": "s3://lab-models/plant/v2/model.pkl"})
    assert {role for role, statements in granted.items() if statements} == {
        "PredictFunctionRole",
        "JobWorkerFunctionRole",
    }
    for role in ("PredictFunctionRole", "JobWorkerFunctionRole"):
        [statement] = granted[role]
        # then
        assert statement["Action"] == "s3:GetObject"
        assert statement["Resource"] == [
            "arn:${AWS::Partition}:s3:::lab-models/plant/v2/model.pkl",
            "arn:${AWS::Partition}:s3:::lab-models/plant/v2/model.manifest.json",
        ]
    function = template["Resources"]["PredictFunction"]["Properties"]
    assert function["Environment"]["Variables"]["MODEL_S3_URI"] == {"Ref": "ModelS3Uri"}
    assert function["EphemeralStorage"] == {"Size": {"Ref": "EphemeralStorageMiB"}}


def test_the_uri_pattern_accepts_what_the_function_accepts(template: dict):
    from handler.gp.artifact import parse_s3_uri

    pattern = template["Parameters"]["ModelS3Uri"]["AllowedPattern"]
    for uri in ("", "s3://lab-models/plant/v2/model.pkl", "s3://a.b-c/x.pkl"):
        assert re.fullmatch(pattern, uri), uri
        if uri:
            parse_s3_uri(uri)
    for uri in ("s3://lab-models/model.json", "https://x/y.pkl", "s3://lab/a.pkl/b.pkl"):
        assert not re.fullmatch(pattern, uri), uri


def test_the_stage_is_throttled_and_the_url_is_an_output(template: dict):
    settings = template["Resources"]["PredictionApi"]["Properties"]["MethodSettings"][0]
    assert {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(settings)
    assert "execute-api" in str(template["Outputs"]["ApiUrl"]["Value"])


def top_level_of_wheels(package: Path) -> set[str]:
    """What the installed wheels put at the package's top level, from their RECORD files."""
    names = set()
    for record in package.glob("*.dist-info/RECORD"):
        names |= {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
    return names


def assert_lean(package: Path, with_model: bool = True, modules: set[Path] | None = None) -> None:
    """Only what the function loads: handler/*.py (or only `modules`), the model artifacts (if it predicts) and the
    wheels, pruned."""
    top_level = {path.name for path in package.iterdir()}
    project = {"handler", "model_artifacts"} if with_model else {"handler"}
    assert top_level - top_level_of_wheels(package) == project, "nothing of the project's else"
    assert {p.relative_to(package) for p in (package / "handler").rglob("*.py")} == (
        modules if modules is not None else {p.relative_to(ROOT) for p in (ROOT / "handler").rglob("*.py")}
    )
    if with_model:  # the deployed manifest and the artifact it names, nothing else
        manifest = json.loads((ROOT / "model_artifacts" / "pretrained-model.manifest.json").read_text())
        assert sorted(p.name for p in (package / "model_artifacts").iterdir()) == sorted(
            ["pretrained-model.manifest.json", manifest["artifact"]]
        )
    leftovers = [
        p.relative_to(package)
        for p in package.rglob("*")
        if p.name in {"tests", "__pycache__", ".hypothesis", ".pytest_cache", ".schemathesis"} or p.suffix == ".pyc"
    ]
    assert not leftovers, leftovers[:10]
    assert not list(package.glob("numpy/_core/include")), "C headers"
    # botocore's models of the services the functions call, and no other (the explorer's has no botocore)
    if (package / "botocore").exists():
        assert {p.name for p in (package / "botocore" / "data").iterdir() if p.is_dir()} == {"s3", "dynamodb", "sqs"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sam_build_packages_only_what_the_function_loads_under_the_size_limit(tmp_path: Path):
    # given a test-run leftover in the project, as a Hypothesis run with its database leaves
    leftover = ROOT / ".hypothesis"
    made_here = not leftover.exists()
    leftover.mkdir(exist_ok=True)
    # when
    build_dir = tmp_path / "build"
    try:
        result = tool(
            "sam", "build", "--template", str(TEMPLATE), "--build-dir", str(build_dir),
            "--cache-dir", str(tmp_path / "cache"), "--build-in-source", timeout=900,
        )  # fmt: skip
    finally:
        if made_here:
            leftover.rmdir()
    # then
    assert result.returncode == 0, result.stdout + result.stderr
    package = build_dir / "PredictFunction"
    assert list(package.glob("numpy/_core/_multiarray_umath.cpython-313-aarch64-linux-gnu.so")), "arm64 wheels"
    assert list(package.glob("numpy.libs/libscipy_openblas64_*.so")), "the BLAS handler/gp/blas.py calls"
    assert_lean(package)
    # the explorer's page and files are the explorer function's alone, with only the modules it imports
    explorer = {p.relative_to(ROOT) for p in (ROOT / "handler" / "explorer").rglob("*") if p.is_file()}
    explorer_package = build_dir / "ExplorerFunction"
    served = {p.relative_to(explorer_package) for p in (explorer_package / "handler" / "explorer").rglob("*")}
    assert {p for p in served if (explorer_package / p).is_file()} == explorer
    assert_lean(explorer_package, with_model=False, modules=EXPLORER_MODULES)
    for absent in ("numpy", "boto3", "botocore", "orjson", "pydantic"):
        assert not list(explorer_package.glob(absent)), absent
    for name in ("PredictFunction", "JobWorkerFunction", "JobFinisherFunction", "RegistryAdminFunction"):
        assert not (build_dir / name / "handler" / "explorer").exists(), name
    # the registry's admin function checks what is published with the API's loader: the API's package
    assert_lean(build_dir / "RegistryAdminFunction")
    manifest = json.loads((ROOT / "model_artifacts" / "pretrained-model.manifest.json").read_text())
    gpy_route = manifest.get("format", "pickle") != "npz"
    # a posterior file is served with numpy alone: no GPy, paramz or scipy (the GPy route adds them)
    for name in ("GPy", "paramz", "scipy"):
        assert bool(list(package.glob(f"{name}/__init__.py"))) == gpy_route, name
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    if not gpy_route:  # before posterior files (GPy, scipy, paramz in every package) it was 175 MiB
        assert size < 80 * 2**20, f"{size / 2**20:.0f} MiB unzipped"
    assert size < LAMBDA_UNZIPPED_LIMIT_BYTES
    # the job worker has the same, and pyarrow for the results' parts (pruned), and no scipy (designs are numpy's);
    # the finisher has no model, GPy, scipy or pyarrow
    worker = build_dir / "JobWorkerFunction"
    assert bool(list(worker.glob("scipy/__init__.py"))) == gpy_route
    assert list(worker.glob("pyarrow/parquet/__init__.py"))
    assert (worker / "handler" / "jobs" / "sobol_directions.npz").is_file(), "handler/jobs/sequences.py reads it"
    assert bool(list(worker.glob("GPy/__init__.py"))) == gpy_route
    assert_lean(worker)
    size = sum(f.stat().st_size for f in worker.rglob("*") if f.is_file())
    assert size < LAMBDA_UNZIPPED_LIMIT_BYTES, f"{size / 2**20:.0f} MiB unzipped"
    finisher = build_dir / "JobFinisherFunction"
    for absent in ("GPy", "scipy", "pyarrow", "model_artifacts"):
        assert not list(finisher.glob(absent)), absent
    assert_lean(finisher, with_model=False)
    size = sum(f.stat().st_size for f in finisher.rglob("*") if f.is_file())
    assert size < LAMBDA_UNZIPPED_LIMIT_BYTES, f"{size / 2**20:.0f} MiB unzipped"


# What the explorer's package holds of handler/: its entry point and what that imports, nothing else.
EXPLORER_MODULES = {
    Path("handler/__init__.py"),
    Path("handler/api/__init__.py"),
    Path("handler/api/errors.py"),
    Path("handler/api/explorer.py"),
    Path("handler/explorer_app.py"),
}

EXPLORER_SMOKE = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])  # the project's tests.events, after the package (whose handler/ comes first)
assert "site-packages" not in " ".join(sys.path), sys.path
import handler.explorer_app
from tests.events import api_event, lambda_context
assert handler.explorer_app.__file__.startswith(sys.argv[1])
for path, expected in (("/explore", 200), ("/explore/explorer.js", 200), ("/explore/x", 404), ("/predict", 404)):
    response = handler.explorer_app.lambda_handler(api_event("GET", path), lambda_context("ExplorerFunction"))
    assert response["statusCode"] == expected, (path, response["statusCode"], response["body"][:300])
    print(path, response["statusCode"])
for absent in ("numpy", "boto3", "orjson", "pydantic", "handler.app", "handler.gp"):
    assert absent not in sys.modules, absent
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_explorer_package_serves_the_page_alone_without_the_model_or_site_packages(tmp_path: Path):
    import platform

    # given the explorer's package for this machine's architecture
    arch = {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]
    package = tmp_path / "explorer"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_function.py"), str(package), "--arch", arch,
         "--package", "explorer"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert_lean(package, with_model=False, modules=EXPLORER_MODULES)
    # when its handler runs from it alone
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", EXPLORER_SMOKE, str(package), str(ROOT)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    # then it serves the page and its files, and imports nothing of the model's
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["200", "200", "404", "404"]


def test_the_explorer_package_holds_exactly_the_modules_its_entry_point_imports():
    from scripts.build_function import EXPLORER_ENTRY, project_modules

    assert {p.relative_to(ROOT) for p in project_modules(EXPLORER_ENTRY)} == EXPLORER_MODULES


FINISHER_SMOKE = """
import sys
sys.path.insert(0, sys.argv[1])
assert "site-packages" not in " ".join(sys.path), sys.path
import numpy as np
import handler.jobs.finisher  # its module-level setup, as at a cold start
from handler.jobs.stitching import Source, plan_parts
for module in (np, handler.jobs.finisher):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
assert not {"GPy", "scipy", "pyarrow"} & set(sys.modules), sorted(sys.modules)
print(len(plan_parts([Source("a", 6 * 2**20), Source("b", 10)])))
"""

WORKER_SMOKE = """
import sys
sys.path.insert(0, sys.argv[1])
assert "site-packages" not in " ".join(sys.path), sys.path
import numpy as np, pyarrow
import handler.jobs.worker  # its module-level setup, as at a cold start
from handler.jobs.designs import generate_rows
from handler.jobs.results import encode_part
for module in (np, pyarrow, handler.jobs.worker):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
rows = sum(generate_rows(method, 8, 1, np.zeros(3), np.ones(3), 2, 6) for method in ("sobol", "halton", "lhs"))
assert "scipy" not in sys.modules, "designs need no scipy"
for fmt in ("csv", "parquet", "npy"):
    print(fmt, len(encode_part(fmt, 0, 4, ["a", "b", "c"], rows)))
"""


def build_package(tmp_path: Path, name: str) -> Path:
    import platform

    arch = {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]
    package = tmp_path / name
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_function.py"), str(package), "--arch", arch,
         "--package", name], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return package


def run_in_package(tmp_path: Path, package: Path, script: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(package)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": "us-east-1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_finisher_package_stitches_without_pyarrow_the_model_or_site_packages(tmp_path: Path):
    package = build_package(tmp_path, "finisher")
    assert run_in_package(tmp_path, package, FINISHER_SMOKE) == ["2"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_worker_package_writes_every_format_with_its_pruned_pyarrow(tmp_path: Path):
    package = build_package(tmp_path, "worker")
    lines = run_in_package(tmp_path, package, WORKER_SMOKE)
    assert [line.split()[0] for line in lines] == ["csv", "parquet", "npy"]
    assert not list(package.glob("pyarrow/libarrow_flight*")), "pruned"


SMOKE = """
import json, sys
sys.path.insert(0, sys.argv[1])
assert "site-packages" not in " ".join(sys.path), sys.path
import handler.app, numpy, GPy
from tests.events import lambda_context
from tests_events import events
for module in (handler.app, numpy, GPy):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
for event, expected in events():
    response = handler.app.lambda_handler(event, lambda_context())
    assert response["statusCode"] == expected, response["body"][:500]
    print(response["statusCode"], response["body"][:120])
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pruned_package_still_serves_every_kind_of_model(tmp_path: Path, plant_model_path: Path):
    # given the same build for this machine's architecture (the arm64 one cannot run here), with the GPy route
    import platform

    arch = {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]
    package = tmp_path / "package"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_function.py"), str(package), "--arch", arch, "--with-gpy"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert_lean(package)
    # when the handler runs from it alone (no site-packages), on the deployed model, then on the plant model
    # (a posterior file: Matern kernel, two outputs) and on a model only GPy itself can predict (a sum of kernels,
    # packaged as its pickle)
    import GPy

    X = np.random.default_rng(0).uniform(size=(20, 2))
    other = GPy.models.GPRegression(X, X[:, :1] ** 2, GPy.kern.RBF(2) + GPy.kern.Linear(2))
    other_path = tmp_path / "other" / "other.pkl"
    other_path.parent.mkdir()
    other_path.write_bytes(pickle.dumps(other))
    package_model = ROOT / "scripts" / "package_model.py"
    packaged = subprocess.run(
        [sys.executable, str(package_model), str(other_path), "--features", "a,b", "--output", str(other_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr
    deployed = json.loads((ROOT / "model_artifacts" / "pretrained-model.manifest.json").read_text())
    assert json.loads(other_path.with_suffix(".manifest.json").read_text())["format"] == "pickle"
    for model_path, point in (
        (None, {f: (low + high) / 2 for f, (low, high) in deployed["bounds"].items()}),
        (plant_model_path, {"temperature": 300.0, "pressure": 2.0, "flow_rate": 1.0}),
        (other_path, {"a": 0.5, "b": 0.5}),
    ):
        # (the explorer's page is not this function's: it has a package and a function of its own)
        (tmp_path / "tests_events.py").write_text(
            "from tests.events import api_event\n"
            f"def events():\n    return [(api_event(body={point!r}), 200), (api_event(body={{}}), 422),"
            " (api_event('GET', '/openapi.json'), 200), (api_event('GET', '/explore/explorer.js'), 404)]\n"
        )
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{tmp_path}:{ROOT}", "LAMBDA_TASK_ROOT": str(package)}
        env |= {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
        if model_path is not None:
            env["MODEL_PATH"] = str(model_path)
        result = subprocess.run(
            [sys.executable, "-S", "-c", SMOKE, str(package)], capture_output=True, text=True, timeout=300, env=env
        )
        # then
        assert result.returncode == 0, result.stdout + result.stderr


def translated(parameters: dict[str, str]) -> dict:
    """The CloudFormation the template becomes for these parameters: AWS::LanguageExtensions, then SAM's transform."""
    import copy

    from samcli.lib.cfn_language_extensions.sam_integration import expand_language_extensions
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    template = yaml_parse(TEMPLATE.read_text())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/code.zip"  # as after sam package
    expanded = expand_language_extensions(copy.deepcopy(template), parameter_values=parameters, enabled=True)
    document = expanded.expanded_template
    document["Transform"] = "AWS::Serverless-2016-10-31"
    return Translator(managed_policy_map={}, sam_parser=Parser()).translate(document, parameter_values=parameters)


def of_type(resources: dict, kind: str) -> list[dict]:
    return [r for r in resources["Resources"].values() if r["Type"] == kind]


def deployed(translation: dict) -> dict:
    """The translation's resources that CloudFormation creates: those whose `Condition` holds.

    AWS::LanguageExtensions has put the parameters' values into the conditions; what is left is Fn::Equals, Fn::Not,
    Fn::And, Fn::Or and references to other conditions."""
    conditions = translation.get("Conditions", {})

    def holds(expression: Any) -> bool:
        [(function, arguments)] = expression.items()
        if function == "Condition":
            return holds(conditions[arguments])
        if function == "Fn::Equals":
            return bool(arguments[0] == arguments[1])
        if function == "Fn::Not":
            return not holds(arguments[0])
        if function == "Fn::And":
            return all(holds(argument) for argument in arguments)
        if function == "Fn::Or":
            return any(holds(argument) for argument in arguments)
        raise AssertionError(f"a condition this helper cannot evaluate: {expression}")

    resources = {
        name: resource
        for name, resource in translation["Resources"].items()
        if "Condition" not in resource or holds({"Condition": resource["Condition"]})
    }
    return {**translation, "Resources": resources}


# The model explorer's page and assets hold no data: open whatever the mode (SAM writes IAM's exception as "NONE").
EXPLORER_PATHS = {"/explore", "/explore/{asset}", "/models/{name}/explore"}
# The model registry's routes (the shared design, issue 22): its writes, RegistryAdminFunction's alone, and its reads,
# with each model's routes by name (or name@alias) and by version, PredictFunction's.
ADMIN_PATHS = {
    "/models/{name}/versions",
    "/models/{name}/versions/{version}/check",
    "/models/{name}/versions/{version}",
    "/models/{name}/aliases/{alias}",
    "/models/{name}/aliases/{alias}/rollback",
    "/models/{name}/observations",
    "/models/{name}/observations/uploads/{upload_id}/start",
    "/models/{name}/train",
    "/models/{name}/training-jobs/{job_id}",
    "/models/{name}/training-jobs/{job_id}/start",
    "/models/{name}/training-jobs/{job_id}/cancel",
}
MODEL_ROUTES = ("predict", "sample", "sensitivity", "propagate", "suggest", "training-data", "manifest", "jobs")
REGISTRY_READ_PATHS = {
    "/models",
    "/models/{name}",
    "/v2/repository/index",
    *(f"/models/{{name}}/{route}" for route in MODEL_ROUTES),
    *(f"/models/{{name}}/versions/{{version}}/{route}" for route in MODEL_ROUTES),
}


@pytest.mark.parametrize(
    ("parameters", "security", "explorer_security", "key_resources", "snap_start", "provisioned", "cors"),
    [
        ({}, [{"api_key": []}], [], 6, "PublishedVersions", None, False),
        ({"AuthMode": "IAM", "ColdStartMode": "ProvisionedConcurrency"}, [{"AWS_IAM": []}], [{"NONE": []}], 0, "None",
         1, False),
        ({"AuthMode": "NONE", "ColdStartMode": "Lazy", "CorsAllowOrigin": "https://lab.example.org"}, None, None, 0,
         "None", None, True),
        ({"CorsAllowOrigin": "https://lab.example.org"}, [{"api_key": []}], [], 6, "PublishedVersions", None, True),
        ({"AuthMode": "IAM", "CorsAllowOrigin": "https://lab.example.org"}, [{"AWS_IAM": []}], [{"NONE": []}], 0,
         "PublishedVersions", None, True),
    ],
    ids=["defaults-api-key-snapstart", "iam-provisioned", "open-lazy-cors", "api-key-cors", "iam-cors"],
)  # fmt: skip
def test_the_parameters_choose_access_cold_start_and_cors(
    monkeypatch, parameters, security, explorer_security, key_resources: int, snap_start: str, provisioned, cors: bool
):
    # when
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated(parameters)
    # then access is as chosen on every route but the explorer's, which is open
    [api] = of_type(resources, "AWS::ApiGateway::RestApi")
    paths = api["Properties"]["Body"]["paths"]
    methods = {
        (path, name): operation
        for path, operations in paths.items()
        for name, operation in operations.items()
        if name != "options"
    }
    assert {path for path, _ in methods} >= EXPLORER_PATHS
    for (path, _), operation in methods.items():
        assert operation.get("security") == (explorer_security if path in EXPLORER_PATHS else security), path
        if path in EXPLORER_PATHS:  # and IAM's caller credentials are not asked of its callers either
            assert "credentials" not in operation["x-amazon-apigateway-integration"]
    active = deployed(resources)
    keys = [*of_type(active, "AWS::ApiGateway::ApiKey"), *of_type(active, "AWS::ApiGateway::UsagePlan"),
            *of_type(active, "AWS::ApiGateway::UsagePlanKey")]  # fmt: skip
    assert len(keys) == key_resources
    if key_resources:  # the callers' key and plan (SAM's), and the registry admin's (the template's own)
        plan = active["Resources"]["PredictionApiUsagePlan"]
        assert plan["Properties"]["Quota"] == {"Limit": 1000000, "Period": "DAY"}
        assert plan["Properties"]["Throttle"] == {"RateLimit": 100, "BurstLimit": 200}
    # and the cold-start mode, on a published version behind the `live` alias
    function = resources["Resources"]["PredictFunction"]
    assert function["Properties"]["SnapStart"] == {"ApplyOn": snap_start}
    assert function["Properties"]["ReservedConcurrentExecutions"] == 20
    alias = resources["Resources"]["PredictFunctionAliaslive"]
    assert alias["Properties"]["Name"] == "live"
    config = alias["Properties"].get("ProvisionedConcurrencyConfig")
    assert (config or {}).get("ProvisionedConcurrentExecutions") == provisioned
    # and CORS preflight only when an origin is given, answered without a key or signature: browsers send none
    assert all(("options" in path) == cors for path in paths.values())
    assert all("security" not in path["options"] for path in paths.values() if "options" in path)
    # and the stage is traced and access-logged
    [stage] = of_type(resources, "AWS::ApiGateway::Stage")
    assert stage["Properties"]["TracingEnabled"] is True
    assert "$context.requestId" in stage["Properties"]["AccessLogSetting"]["Format"]
    assert_the_open_routes_reach_only_the_explorer_function(resources, paths, cors)


def integrated_function(operation: dict) -> str:
    """The logical id of the function (or its alias) an API method invokes, from its integration's URI."""
    uri = json.dumps(operation["x-amazon-apigateway-integration"]["uri"])
    [name] = re.findall(r"functions/\$\{(\w+?)(?:\.Arn)?\}/invocations", uri)
    return name


def assert_the_open_routes_reach_only_the_explorer_function(resources: dict, paths: dict, cors: bool) -> None:
    """The explorer's open routes invoke its own small function with GET and HEAD only; no keyed route invokes it,
    and its methods have their own throttle, so an anonymous flood spends neither the prediction function's
    reserved concurrency nor the keyed routes' rate."""
    invoked = {
        (path, method): integrated_function(operation)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if method != "options"  # CORS preflight: a mock integration, no function
    }
    for (path, method), function in invoked.items():
        if path in EXPLORER_PATHS:
            assert function == "ExplorerFunction", (path, method)
        elif path in ADMIN_PATHS:
            assert function == "RegistryAdminFunctionAliaslive", (path, method)
        else:
            assert function == "PredictFunctionAliaslive", (path, method)
    for path in EXPLORER_PATHS:  # other methods: API Gateway's 403 "Missing Authentication Token", no function
        assert set(paths[path]) == {"get", "head", *(["options"] if cors else [])}, path
    explorer = resources["Resources"]["ExplorerFunction"]["Properties"]
    assert explorer["ReservedConcurrentExecutions"] == 2  # ExplorerReservedConcurrency's default
    assert (
        explorer["ReservedConcurrentExecutions"]
        < resources["Resources"]["PredictFunction"]["Properties"]["ReservedConcurrentExecutions"]
    )
    assert explorer["MemorySize"] == 512
    [stage] = of_type(resources, "AWS::ApiGateway::Stage")
    settings = {(s["ResourcePath"], s["HttpMethod"]): s for s in stage["Properties"]["MethodSettings"]}
    own = {
        ("/~1explore", "GET"),
        ("/~1explore", "HEAD"),
        ("/~1explore~1{asset}", "GET"),
        ("/~1explore~1{asset}", "HEAD"),
        ("/~1models~1{name}~1explore", "GET"),
        ("/~1models~1{name}~1explore", "HEAD"),
    }
    assert set(settings) == {("/*", "*"), *own}
    for key in own:
        assert (settings[key]["ThrottlingRateLimit"], settings[key]["ThrottlingBurstLimit"]) == (10, 20), key
    assert (settings[("/*", "*")]["ThrottlingRateLimit"], settings[("/*", "*")]["ThrottlingBurstLimit"]) == (100, 200)
    # and it may do nothing but log: no inline policy, only the managed logging (and tracing) policies
    role = resources["Resources"]["ExplorerFunctionRole"]["Properties"]
    assert "Policies" not in role
    assert {arn.rsplit("/", 1)[-1] for arn in role["ManagedPolicyArns"]} <= {
        "AWSLambdaBasicExecutionRole",
        "AWSXrayWriteOnlyAccess",
    }


def test_alarms_cover_errors_throttles_latency_the_model_and_failed_jobs(template: dict):
    alarms = {
        name: r["Properties"] for name, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    metrics = {(a["Namespace"], a["MetricName"]) for a in alarms.values()}
    assert metrics == {
        ("AWS/ApiGateway", "5XXError"),
        ("AWS/ApiGateway", "4XXError"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Duration"),
        ("GPRSurrogate", "ModelLoadFailures"),
        ("AWS/SQS", "NumberOfMessagesReceived"),  # job messages dead-lettered
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),  # training messages dead-lettered (nothing consumes them)
    }
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == {"Fn::If": ["AlarmMail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    # the custom metric's namespace and dimension are the ones the function emits
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "GPRSurrogate"
    dimension = alarms["ModelLoadFailureAlarm"]["Dimensions"][0]
    assert dimension == {"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}


def test_every_checkov_skip_says_why(template: dict):
    skips = [
        (name, skip)
        for name, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert len(skip.get("comment", "")) > 40, f"{name} skips {skip['id']} without a reason"


def test_the_jobs_resources_are_private_expiring_and_retried_into_a_dead_letter_queue(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({})["Resources"]
    bucket = resources["JobsBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert (rule["Prefix"], rule["ExpirationInDays"]) == ("jobs/", 7)  # JobRetentionDays' default
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    (tls,) = resources["JobsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (tls["Effect"], tls["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": False}})
    table = resources["JobsTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    worker_timeout = resources["JobWorkerFunction"]["Properties"]["Timeout"]
    for queue in ("JobQueue", "ResultsQueue"):
        properties = resources[queue]["Properties"]
        assert properties["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": ["JobDeadLetterQueue", "Arn"]},
            "maxReceiveCount": 3,
        }
        assert properties["SqsManagedSseEnabled"] is True
    assert resources["JobQueue"]["Properties"]["VisibilityTimeout"] >= 6 * worker_timeout
    mappings = {
        name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Lambda::EventSourceMapping"
    }
    assert {(m["FunctionName"]["Ref"], m["EventSourceArn"]["Fn::GetAtt"][0]) for m in mappings.values()} == {
        ("JobWorkerFunction", "JobQueue"),
        ("JobFinisherFunction", "ResultsQueue"),
        ("JobFinisherFunction", "JobDeadLetterQueue"),
        ("TrainingFunction", "TrainingQueue"),
    }
    assert all(m["FunctionResponseTypes"] == ["ReportBatchItemFailures"] for m in mappings.values())
    assert mappings["JobWorkerFunctionWork"]["ScalingConfig"] == {"MaximumConcurrency": 20}  # JobWorkerConcurrency
    assert resources["JobWorkerFunction"]["Properties"]["ReservedConcurrentExecutions"] == 20


JOBS_RESOURCES = ("JobsBucket", "JobsTable", "JobQueue", "ResultsQueue")
REGISTRY_RESOURCES = ("RegistryBucket", "RegistryTable")


def _granted(resources: dict, role: str) -> dict[str, set[str]]:
    """Each action the role's inline policies allow -> the resources (logical ids) it is allowed on."""
    granted: dict[str, set[str]] = {}
    for policy in resources[role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            names = set()
            for target in targets:
                assert target != "*", f"{role} grants {actions} on every resource"
                text = json.dumps(target)
                names |= {n for n in (*JOBS_RESOURCES, *REGISTRY_RESOURCES) if n in re.findall(r"\w+", text)}
            for action in actions:
                granted.setdefault(action, set()).update(names)
    return granted


def test_each_function_may_touch_only_the_jobs_resources_it_uses(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({})["Resources"]
    api = _granted(resources, "PredictFunctionRole")
    worker = _granted(resources, "JobWorkerFunctionRole")
    finisher = _granted(resources, "JobFinisherFunctionRole")
    # the API writes inputs and signs URLs, keeps job and idempotency records, and queues work, never results
    assert api["s3:PutObject"] == {"JobsBucket"}
    assert set(api) >= {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    assert api["sqs:SendMessage*"] == {"JobQueue"}
    assert not any(action.startswith("dynamodb:Scan") for action in api)
    # the worker queues chunks and assemblies, and may delay its own retries
    assert worker["sqs:SendMessage*"] == {"JobQueue", "ResultsQueue"}
    assert worker["sqs:ChangeMessageVisibility"] == {"JobQueue"}
    # the finisher sends nothing, may abort the multipart upload of a failed stitch, and delete the parts it stitched
    assert not any(action.startswith("sqs:Send") for action in finisher)
    assert finisher["sqs:ChangeMessageVisibility"] == {"ResultsQueue"}  # it delays its own retries
    assert finisher["s3:AbortMultipartUpload"] == {"JobsBucket"}
    assert finisher["s3:DeleteObject"] == {"JobsBucket"}
    assert "s3:DeleteObject" not in worker
    assert worker["s3:AbortMultipartUpload"] == {"JobsBucket"}
    assert not any(action.startswith("dynamodb:Delete") for action in {**worker, **finisher})


@pytest.mark.parametrize(
    ("document", "needs_gpy"),
    [
        ({"schema_version": 3, "format": "npz", "artifact": "pretrained-model.npz"}, False),
        ({"schema_version": 3, "format": "pickle", "artifact": "pretrained-model.pkl"}, True),
        ({"schema_version": 2, "artifact": "pretrained-model.pkl"}, True),
    ],
    ids=["posterior-file", "pickle", "schema-2-pickle"],
)
def test_the_build_adds_the_gpy_route_only_for_a_pickle(tmp_path: Path, document: dict, needs_gpy: bool):
    from scripts.build_function import model_files

    manifest = tmp_path / "pretrained-model.manifest.json"
    manifest.write_text(json.dumps(document))
    files, gpy = model_files(manifest)
    assert gpy is needs_gpy
    assert files == [manifest, tmp_path / document["artifact"]]


def test_the_registry_admin_function_declares_exactly_its_handlers_paths_with_any_method(template: dict):
    from handler.registry_admin_app import app

    function = template["Resources"]["RegistryAdminFunction"]["Properties"]
    assert function["Handler"] == "handler.registry_admin_app.lambda_handler"
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in function["Events"].values()}
    routes = (*app._static_routes, *app._dynamic_routes)
    assert declared == {("any", route.path.replace("<", "{").replace(">", "}")) for route in routes}
    assert {path for _, path in declared} == ADMIN_PATHS


def test_every_registry_read_route_is_an_event_of_the_api_function(template: dict):
    events = template["Resources"]["PredictFunction"]["Properties"]["Events"].values()
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events if e["Type"] == "Api"}
    assert {("any", path) for path in REGISTRY_READ_PATHS} <= declared
    assert not {path for _, path in declared} & ADMIN_PATHS


@pytest.mark.parametrize("auth_mode", ["API_KEY", "IAM", "NONE"])
def test_every_admin_route_is_served_by_the_admin_function_alone(monkeypatch, auth_mode: str):
    # given the API CloudFormation gets
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({"AuthMode": auth_mode})
    [api] = of_type(resources, "AWS::ApiGateway::RestApi")
    invoked = {
        (path, method): integrated_function(operation)
        for path, operations in api["Properties"]["Body"]["paths"].items()
        for method, operation in operations.items()
        if method != "options"
    }
    # then each admin path invokes the admin function's `live` alias, whatever the method (it answers 405 itself),
    admin = {key for key, function in invoked.items() if function == "RegistryAdminFunctionAliaslive"}
    assert {path for path, _ in admin} == ADMIN_PATHS
    assert admin == {key for key in invoked if key[0] in ADMIN_PATHS}
    # and no other: the reads reach the API function, which may not write (below)
    for path in REGISTRY_READ_PATHS:
        assert {function for (p, _), function in invoked.items() if p == path} == {"PredictFunctionAliaslive"}, path


# What reading the registry takes: its objects, a missing one as S3's 404 (ListBucket), and its records.
REGISTRY_READS = {"s3:GetObject", "s3:ListBucket", "dynamodb:GetItem", "dynamodb:Query"}


def registry_grants(resources: dict) -> dict[str, dict[str, set[str]]]:
    """Per function role, the actions it is allowed on the registry's bucket or table -> which of the two."""
    grants = {}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            granted = _granted(resources, name)
            grants[name] = {
                action: targets & set(REGISTRY_RESOURCES)
                for action, targets in granted.items()
                if targets & set(REGISTRY_RESOURCES)
            }
    return grants


def test_only_the_admin_function_may_write_the_registry(monkeypatch):
    # given every function role's permissions on the registry
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({})["Resources"]
    grants = registry_grants(resources)
    # then the API function (and the job worker, for jobs on a registry model) only read it
    assert set(grants["PredictFunctionRole"]) == REGISTRY_READS
    assert set(grants["JobWorkerFunctionRole"]) == REGISTRY_READS
    writers = {role for role, actions in grants.items() if set(actions) - REGISTRY_READS}
    assert writers == {"RegistryAdminFunctionRole", "TrainingFunctionRole"}
    # and the admin function writes objects and records, with conditions and transactions, but deletes nothing
    assert grants["RegistryAdminFunctionRole"] == {
        "s3:PutObject": {"RegistryBucket"},
        "s3:GetObject": {"RegistryBucket"},
        "s3:ListBucket": {"RegistryBucket"},
        "dynamodb:GetItem": {"RegistryTable"},
        "dynamodb:PutItem": {"RegistryTable"},
        "dynamodb:UpdateItem": {"RegistryTable"},
        "dynamodb:Query": {"RegistryTable"},
        "dynamodb:ConditionCheckItem": {"RegistryTable"},
    }
    # and the readers read the versions' files (models/) alone; the admin function also the publishers' uploads
    for role, prefixes in (
        ("PredictFunctionRole", {"models/"}),
        ("JobWorkerFunctionRole", {"models/"}),
        ("RegistryAdminFunctionRole", {"models/", "uploads/", "datasets/"}),
        ("TrainingFunctionRole", {"models/", "uploads/", "datasets/"}),
    ):
        granted_prefixes = set()
        for policy in resources[role]["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                if "RegistryBucket" in json.dumps(statement) and statement["Action"] != "s3:ListBucket":
                    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                    assert all(action.startswith("s3:") and "Object" in action for action in actions), statement
                    targets = (
                        statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                    )
                    for target in targets:  # (the local translation leaves Fn::Sub's string)
                        pattern = target["Fn::Sub"] if isinstance(target, dict) else target
                        [prefix] = re.fullmatch(r"\$\{RegistryBucket\.Arn\}/(\w+/)\*", pattern).groups()
                        granted_prefixes.add(prefix)
        assert granted_prefixes == prefixes, role
    # and the training function reads the datasets it fits but never writes one (the admin function does)
    for policy in resources["TrainingFunctionRole"]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if "/datasets/" in json.dumps(statement):
                assert statement["Action"] in ("s3:GetObject", ["s3:GetObject"]), statement
    # and no other function touches the registry at all
    assert {role for role, actions in grants.items() if actions} == {
        "PredictFunctionRole",
        "JobWorkerFunctionRole",
        "RegistryAdminFunctionRole",
        "TrainingFunctionRole",
    }
    # and the training function writes as the admin function does (it publishes what it fits), deleting nothing
    assert grants["TrainingFunctionRole"] == grants["RegistryAdminFunctionRole"]


def test_the_registry_is_private_and_keyed_as_the_registry_reads_it(monkeypatch, template: dict):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({})["Resources"]
    bucket = resources["RegistryBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rules = {rule["Prefix"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert set(rules) == {"uploads/", "models/"}
    assert all(rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1} for rule in rules.values())
    assert rules["uploads/"]["ExpirationInDays"] == 1  # a publisher's upload, copied under models/ by the check
    assert "ExpirationInDays" not in rules["models/"], "published versions never expire"
    (tls,) = resources["RegistryBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (tls["Effect"], tls["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": False}})
    table = resources["RegistryTable"]["Properties"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("pk", "S"),
        ("sk", "S"),
    }
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}
    # only training jobs' records carry expires_at (tests/test_training_jobs.py): versions, aliases, history and
    # datasets are kept
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    for name in ("RegistryBucket", "RegistryTable"):  # published models outlive the stack
        assert (resources[name]["DeletionPolicy"], resources[name]["UpdateReplacePolicy"]) == ("Retain", "Retain")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["REGISTRY_BUCKET"] == {"Ref": "RegistryBucket"}
    assert variables["REGISTRY_TABLE"] == {"Ref": "RegistryTable"}


@pytest.mark.parametrize("auth_mode", ["API_KEY", "IAM", "NONE"])
def test_the_admin_key_and_its_usage_plan_exist_only_with_api_keys(monkeypatch, auth_mode: str):
    # when
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    translation = translated({"AuthMode": auth_mode})
    active = deployed(translation)["Resources"]
    admin_variables = active["RegistryAdminFunction"]["Properties"]["Environment"]["Variables"]
    outputs = {
        name for name, output in translation["Outputs"].items() if "Condition" not in output or auth_mode == "API_KEY"
    }
    admin = {"AdminApiKey", "AdminUsagePlan", "AdminUsagePlanKey"}
    if auth_mode != "API_KEY":
        # then no admin key: IAM grants the admin routes by policy, NONE turns writes off (or on) by parameter
        assert not admin & set(active)
        assert admin_variables["REGISTRY_ADMIN_KEY_ID"] == ""
        assert "AdminApiKeyId" not in outputs
        return
    # then a key of its own, in a usage plan of its own on the API's stage, with a throttle below the callers'
    assert admin <= set(active)
    plan = active["AdminUsagePlan"]["Properties"]
    [stage] = [name for name, resource in active.items() if resource["Type"] == "AWS::ApiGateway::Stage"]
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "PredictionApi"}, "Stage": {"Ref": stage}}]
    callers = active["PredictionApiUsagePlan"]["Properties"]["Throttle"]
    assert plan["Throttle"]["RateLimit"] < callers["RateLimit"]
    assert plan["Throttle"]["BurstLimit"] < callers["BurstLimit"]
    assert active["AdminUsagePlanKey"]["Properties"] == {
        "KeyId": {"Ref": "AdminApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": "AdminUsagePlan"},
    }
    # and the admin function knows its id (API Gateway puts the caller's key id in the event), no other function does
    assert admin_variables["REGISTRY_ADMIN_KEY_ID"] == {"Ref": "AdminApiKey"}
    others = [r for n, r in active.items() if r["Type"] == "AWS::Lambda::Function" and n != "RegistryAdminFunction"]
    assert all("REGISTRY_ADMIN_KEY_ID" not in r["Properties"]["Environment"]["Variables"] for r in others)
    # and the stack's outputs give the id and the command that reads the key's value
    output = translation["Outputs"]["AdminApiKeyId"]
    assert output["Value"] == {"Ref": "AdminApiKey"}
    assert "aws apigateway get-api-key --api-key <id> --include-value" in " ".join(output["Description"].split())


@pytest.mark.parametrize(
    ("parameters", "writes"),
    [
        ({}, "true"),
        ({"AuthMode": "IAM"}, "true"),
        ({"AuthMode": "NONE"}, "false"),
        ({"AuthMode": "NONE", "RegistryWritesWithoutAuth": "true"}, "true"),
        ({"AuthMode": "API_KEY", "RegistryWritesWithoutAuth": "true"}, "true"),
    ],
    ids=["api-key", "iam", "open", "open-writes-asked", "api-key-writes-asked"],
)
def test_registry_writes_are_on_where_the_api_checks_its_callers_or_where_asked(
    monkeypatch, parameters: dict, writes: str
):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated(parameters)["Resources"]
    assert resources["RegistryAdminFunction"]["Properties"]["Environment"]["Variables"]["REGISTRY_WRITES"] == writes


@pytest.mark.parametrize("deployment_type", ["AllAtOnce", "Canary10Percent5Minutes", "Linear10PercentEvery1Minute"])
def test_code_deploys_move_the_live_aliases_as_chosen_rolled_back_by_the_alarms(
    monkeypatch, template: dict, deployment_type: str
):
    # when
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({"DeploymentType": deployment_type})["Resources"]
    alarms = {
        name: (r["Properties"]["Namespace"], r["Properties"]["MetricName"])
        for name, r in template["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    error_alarm = next(name for name, metric in alarms.items() if metric == ("AWS/ApiGateway", "5XXError"))
    latency_alarm = next(name for name, metric in alarms.items() if metric == ("AWS/Lambda", "Duration"))
    # then each function's `live` alias moves through CodeDeploy with the chosen configuration
    for function, rolled_back_by in (
        ("PredictFunction", {error_alarm, latency_alarm}),
        ("RegistryAdminFunction", {error_alarm}),
    ):
        update = resources[f"{function}Aliaslive"]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
        assert update["DeploymentGroupName"] == {"Ref": f"{function}DeploymentGroup"}
        group = resources[f"{function}DeploymentGroup"]["Properties"]
        assert group["DeploymentConfigName"] == {
            "Fn::Sub": ["CodeDeployDefault.Lambda${ConfigName}", {"ConfigName": deployment_type}]
        }
        # and the alarms stop and roll it back
        assert group["AlarmConfiguration"]["Enabled"] is True
        assert {alarm["Name"]["Ref"] for alarm in group["AlarmConfiguration"]["Alarms"]} == rolled_back_by
        assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
    # and the latency alarm watches the API function
    assert template["Resources"][latency_alarm]["Properties"]["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "PredictFunction"}}
    ]
    # and a first deploy is quick unless the user chooses otherwise
    assert template["Parameters"]["DeploymentType"]["Default"] == "AllAtOnce"


LAMBDA_POLICY_LIMIT_BYTES = 20 * 1024  # a function's (or alias's) resource-based policy, a hard Lambda quota


def test_each_aliass_resource_policy_fits_lambdas_limit_for_any_stack_name(monkeypatch):
    """SAM adds one statement per API event to the policy of the function (alias) it invokes; past 20 KB the deploy
    fails ("The final policy size ... is bigger than the limit"). Each statement is sized here as Lambda stores it,
    for the longest names CloudFormation makes (statement ids of 100 characters, function names of 64)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = translated({})["Resources"]
    sizes: dict[str, int] = {}
    for resource in resources.values():
        if resource["Type"] != "AWS::Lambda::Permission":
            continue
        target = resource["Properties"]["FunctionName"]
        function = target.get("Ref") or target["Fn::GetAtt"][0]
        source = resource["Properties"]["SourceArn"]["Fn::Sub"]
        pattern, names = source if isinstance(source, list) else (source, {})
        source_arn = pattern.replace("${__ApiId__}", "a" * 10).replace("${__Stage__}", names.get("__Stage__", "*"))
        for variable, value in (("AWS::Partition", "aws-us-gov"), ("AWS::Region", "ap-southeast-5"),
                                ("AWS::AccountId", "1" * 12)):  # fmt: skip
            source_arn = source_arn.replace(f"${{{variable}}}", value)
        statement = {
            "Sid": "s" * 100,
            "Effect": "Allow",
            "Principal": {"Service": "apigateway.amazonaws.com"},
            "Action": "lambda:InvokeFunction",
            "Resource": f"arn:aws-us-gov:lambda:ap-southeast-5:{'1' * 12}:function:{'f' * 64}:live",
            "Condition": {"ArnLike": {"AWS:SourceArn": source_arn}},
        }
        sizes[function] = sizes.get(function, 0) + len(json.dumps(statement, separators=(",", ":"))) + 1
    assert sizes["PredictFunctionAliaslive"] > sizes["RegistryAdminFunctionAliaslive"]
    for function, size in sizes.items():
        assert size + len('{"Version":"2012-10-17","Id":"default","Statement":[]}') < LAMBDA_POLICY_LIMIT_BYTES, (
            function,
            size,
        )
