"""Physical limits and units in the manifest (issue 21): limits are never widened, so the served domain is the
training bounds widened by DOMAIN_MARGIN within them, for /predict, V2, the analyses and jobs alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import ModelUnavailableError, PackagedArtifact, manifest_path_for, read_manifest
from handler.gp.model import LazyModel
from handler.jobs.worker import JobInputError, check_points
from scripts import package_model
from tests.conftest import built_once
from tests.events import api_event, lambda_context, response_json
from tests.test_quality_gate import BOREHOLE_BOUNDS, BOREHOLE_FEATURES, build_borehole

LIMITS = "rw=0:,r=0:"
UNITS = "r=m,rw=m,flow=m3/yr"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Borehole model fitted with its lengthscales started at the ranges (passes the quality gate)."""
    return built_once(tmp_path_factory, "borehole", build_borehole) / "started.pkl"


@pytest.fixture(scope="module")
def limited_model(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """The Borehole model packaged with physical limits and units."""

    def build(folder: Path) -> None:
        status = package_model.main(
            [str(source), "--features", BOREHOLE_FEATURES, "--outputs", "flow", "--limits", LIMITS,
             "--units", UNITS, "--output", str(folder / "borehole.npz")]
        )  # fmt: skip
        assert status == 0

    return built_once(tmp_path_factory, "borehole-limited", build) / "borehole.npz"


@pytest.fixture
def limited_app(monkeypatch: pytest.MonkeyPatch, limited_model: Path):
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(limited_model)))
    return app


def call(app, method: str, path: str, body=None):
    response = app.lambda_handler(api_event(method, path, body), lambda_context())
    return response["statusCode"], response_json(response)


def centre() -> dict[str, float]:
    return {name: (low + high) / 2 for name, (low, high) in BOREHOLE_BOUNDS.items()}


def test_the_widened_training_domain_reaches_below_the_limit(limited_model: Path):
    # (what makes the case: r's training range widened by 10% reaches r < 0, where no radius is)
    manifest = read_manifest(manifest_path_for(limited_model).read_bytes(), "test")
    j = manifest.features.index("r")
    low, high = manifest.bounds[j]
    assert low - 0.1 * (high - low) < -1000


@pytest.mark.parametrize(
    ("body", "field"),
    [({**centre(), "r": -1000.0}, "r"), ([centre(), {**centre(), "r": -1000.0}], "[1].r"),
     ({name: [value, -1000.0 if name == "r" else value] for name, value in centre().items()}, "r[1]")],
    ids=["point", "rows", "columns"],
)  # fmt: skip
def test_predict_refuses_an_input_below_its_physical_limit_naming_the_field_and_the_limit(limited_app, body, field):
    # when a radius of -1000 m is sent, inside the widened training domain but below the physical limit r >= 0
    status, answer = call(limited_app, "POST", "/predict", body)
    # then 422, naming the field and which limit
    assert status == 422, answer
    assert [detail["field"] for detail in answer["details"]] == [field]
    assert "-1000 is outside the allowed range [0, " in answer["details"][0]["message"]
    assert answer["details"][0]["message"].endswith("] m: below the physical limit 0")  # r's unit, m


def test_a_value_just_past_an_end_is_shown_with_the_digits_that_tell_them_apart():
    from handler.gp.artifact import DomainViolation

    # given a value one float above a physical limit of 1, which six digits would show as 1
    violation = DomainViolation(0, "frac", 1 + 2.2e-16, -0.1, 1.0, below=False, physical=True)
    # then the message shows enough digits to see why it is refused
    assert violation.describe() == (
        "1.0000000000000002 is outside the allowed range [-0.10000000000000001, 1]: above the physical limit 1"
    )


def test_predict_answers_inside_the_limits_and_names_the_training_domain_beyond_it(limited_app):
    status, answer = call(limited_app, "POST", "/predict", {**centre(), "r": 1000.0})
    assert status == 200, answer
    status, answer = call(limited_app, "POST", "/predict", {**centre(), "r": 1e6})
    assert status == 422
    assert answer["details"][0]["message"].endswith("above the training domain")


def test_v2_refuses_an_input_below_its_physical_limit(limited_app):
    manifest = limited_app.model.manifest()
    point = [[{**centre(), "r": -1000.0}[name] for name in manifest.features]]
    request = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP64", "data": point}]}
    status, answer = call(limited_app, "POST", f"/v2/models/{manifest.name}/versions/{manifest.version}/infer", request)
    assert status == 422, answer
    assert "(r) = -1000 is outside the allowed range [0, " in answer["error"]
    assert "below the physical limit 0" in answer["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/sensitivity", {"n": 16, "inputs": {"r": {"distribution": "uniform", "low": -1000, "high": 1000}}}, "inputs.r"),
     ("/propagate", {"n": 16, "inputs": {"r": {"distribution": "uniform", "low": -1000, "high": 1000}}}, "inputs.r"),
     ("/suggest", {"bounds": {"r": [-1000, 1000]}}, "bounds.r"),
     ("/suggest", {"pending": [{**centre(), "r": -1000.0}]}, "pending[0].r")],
    ids=["sensitivity", "propagate", "suggest-bounds", "suggest-pending"],
)  # fmt: skip
def test_the_analyses_refuse_inputs_below_a_physical_limit(limited_app, path: str, body, field: str):
    status, answer = call(limited_app, "POST", path, body)
    assert status == 422, answer
    assert [detail["field"] for detail in answer["details"]] == [field]
    assert "(0 is r's physical limit)" in answer["details"][0]["message"]


@pytest.mark.parametrize("path", ["/sensitivity", "/propagate"])
def test_an_unbounded_input_across_a_physical_limit_is_refused_though_it_mostly_lies_inside(limited_app, path: str):
    # given a normal for r whose mass below r's physical limit 0 is far under the 1% the domain's margin allows
    normal = {"r": {"distribution": "normal", "mean": 25_000, "std": 6_000}}
    # when an analysis samples it
    status, answer = call(limited_app, "POST", path, {"n": 16, "posterior_samples": 0, "inputs": normal})
    # then no impossible sample is evaluated: a 422 naming the input and the way out
    assert status == 422, answer
    assert [detail["field"] for detail in answer["details"]] == ["inputs.r"]
    assert "beyond r's physical limits [0, inf]; use a truncnormal" in answer["details"][0]["message"]
    # and a lognormal, positive like r, is not refused for it
    lognormal = {"r": {"distribution": "lognormal", "mu": 10, "sigma": 0.2}}
    status, answer = call(limited_app, "POST", path, {"n": 16, "posterior_samples": 0, "inputs": lognormal})
    assert status == 200, answer


def test_the_analyses_answer_inside_the_limits(limited_app):
    inside = {"r": {"distribution": "uniform", "low": 0, "high": 1000}}
    status, answer = call(limited_app, "POST", "/propagate", {"n": 16, "posterior_samples": 0, "inputs": inside})
    assert status == 200, answer
    assert answer["points_outside_domain"] == 0


def test_a_job_design_and_uploaded_rows_respect_the_limits(limited_app, limited_model: Path, monkeypatch):
    from moto import mock_aws

    from tests.jobs_harness import start_harness

    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(limited_model)))
        # a design reaching below r >= 0 is refused, naming the field and the limit
        spec = {"method": "lhs", "n": 100, "seed": 1, "bounds": {"r": [-1000, 1000]}}
        status, _, answer = jobs.call("POST", "/jobs", {"design": spec})
        assert status == 422, answer
        assert answer["details"][0]["field"] == "design.bounds.r"
        assert "(0 is r's physical limit)" in answer["details"][0]["message"]
        # and inline points as /predict's
        status, _, answer = jobs.call("POST", "/jobs", {"points": [{**centre(), "r": -1000.0}]})
        assert status == 422, answer
        assert answer["details"][0]["field"] == "points[0].r"
    # an uploaded row below the limit fails its job, naming the row, the feature and the limit
    manifest = limited_app.model.manifest()
    row = np.array([[{**centre(), "r": -1000.0}[name] for name in manifest.features]])
    with pytest.raises(JobInputError, match=r"row 2: r = -1000 is outside the allowed range \[0, .*physical limit 0"):
        check_points(row, manifest, limited_app.settings.domain_margin, first_row=2)


def test_get_model_serves_the_units_and_the_physical_limits_beside_the_deployments_limits(limited_app):
    status, answer = call(limited_app, "GET", "/model")
    assert status == 200
    assert answer["units"] == {"r": "m", "rw": "m", "flow": "m3/yr"}
    assert answer["physical_limits"] == {"rw": [0.0, None], "r": [0.0, None]}
    assert answer["limits"]["max_batch_size"] == limited_app.settings.max_batch_size


def test_the_openapi_document_bounds_each_feature_by_the_served_domain(limited_app):
    status, document = call(limited_app, "GET", "/openapi.json")
    assert status == 200
    schemas = document["components"]["schemas"]
    low, high = limited_app.model.manifest().domain(limited_app.settings.domain_margin)
    for j, name in enumerate(BOREHOLE_BOUNDS):
        point = schemas["PredictPoint"]["properties"][name]
        assert (point["minimum"], point["maximum"]) == (float(low[j]), float(high[j])), name
    assert schemas["PredictPoint"]["properties"]["r"]["minimum"] == 0.0
    assert "within its physical limits [0, inf)" in schemas["PredictPoint"]["properties"]["r"]["description"]
    assert "In m." in schemas["PredictPoint"]["properties"]["r"]["description"]
    pending = next(o for o in schemas["SuggestRequest"]["properties"]["pending"]["anyOf"] if o.get("type") == "array")
    assert pending["items"]["properties"]["r"]["minimum"] == 0.0


def test_converting_the_packaged_model_keeps_its_limits_and_units(source: Path, tmp_path: Path):
    # given the model packaged as a pickle with its limits and units
    first = tmp_path / "first" / "borehole.pkl"
    arguments = [str(source), "--features", BOREHOLE_FEATURES, "--outputs", "flow", "--limits", LIMITS,
                 "--units", UNITS, "--gpy-route", "--output", str(first)]  # fmt: skip
    assert package_model.main(arguments) == 0
    # when it is converted with nothing but its path
    assert package_model.main([str(first), "--output", str(tmp_path / "second" / "borehole.npz")]) == 0
    # then the limits and units come from its manifest
    before = json.loads(manifest_path_for(first).read_text())
    after = json.loads(manifest_path_for(tmp_path / "second" / "borehole.npz").read_text())
    assert (after["limits"], after["units"]) == (before["limits"], before["units"])
    assert after["limits"] == {"rw": [0.0, None], "r": [0.0, None]}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--limits", "r=300:"], "--limits: r: [300, inf] does not contain the training bounds ["),
     (["--limits", "r=5:1"], "--limits: r: expected low < high, got [5, 1]"),
     (["--limits", "depth=0:"], "--limits: 'depth' is not one of the features (rw, r, Tu, Hu, Tl, Hl, L, Kw)"),
     (["--limits", "r=:"], "--limits: expected NAME=LOW:HIGH, NAME=LOW: or NAME=:HIGH, got 'r=:'"),
     (["--limits", "r=0:inf"], "--limits: 'r=0:inf': leave an end out to leave it open, rather than inf"),
     (["--units", "r="], "--units: r: expected a printable string of 1 to 32 characters"),
     (["--units", "depth=m"], "--units: 'depth' is not a feature or output ("),
     (["--units", "r=" + "m" * 33], "--units: r: expected a printable string of 1 to 32 characters")],
    ids=["not-containing-the-bounds", "low-above-high", "unknown-feature", "no-end", "infinite", "empty-unit",
         "unknown-name", "long-unit"],
)  # fmt: skip
def test_wrong_limits_or_units_exit_2_with_one_line(source: Path, tmp_path: Path, capsys, arguments, message):
    output = tmp_path / "out.npz"
    status = package_model.main(
        [str(source), "--features", BOREHOLE_FEATURES, "--outputs", "flow", *arguments, "--output", str(output)]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith(f"package_model: error: {message}")
    assert not output.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"limits": {"r": [300, None]}}, "limits: r: [300, inf] does not contain the training bounds"),
     ({"limits": {"depth": [0, None]}}, "limits: 'depth' is not a feature"),
     ({"limits": {"r": [None, None]}}, "limits: r: expected [low or null, high or null] with at least one end"),
     ({"limits": {"r": [1, 0]}}, "limits: r: expected low < high"),
     ({"limits": {"r": ["0", None]}}, "limits: r: each end must be a finite number or null"),
     ({"limits": []}, "limits: expected an object"),
     ({"units": {"r": "m\n"}}, "units: r: expected a printable string"),
     ({"units": {"depth": "m"}}, "units: 'depth' is not a feature or output"),
     ({"units": {"r": 5}}, "units: r: expected a printable string"),
     ({"units": {"r": "$x_$"}}, "units: r: a unit may not hold $"),
     ({"units": {"r": '<a href="//e.vil">m</a>'}}, "units: r: a unit may not hold \" < >"),
     ({"limits": {"r": [-(10**400), None]}}, "is invalid"),
     ({"bounds": {"r": [0, 10**400]}}, "is invalid")],
    ids=["not-containing-the-bounds", "unknown-feature", "no-end", "low-above-high", "string-end", "not-an-object",
         "unprintable-unit", "unknown-name", "unit-not-a-string", "tex-unit", "html-unit", "limit-beyond-floats",
         "bound-beyond-floats"],
)  # fmt: skip
def test_the_loader_refuses_a_manifest_with_wrong_limits_or_units(limited_model: Path, tmp_path: Path, change, message):
    # given the packaged model with its manifest's limits or units broken
    path = tmp_path / limited_model.name
    shutil.copy(limited_model, path)
    document = json.loads(manifest_path_for(limited_model).read_text())
    manifest_path_for(path).write_text(json.dumps({**document, **change}))
    # when the function loads it, then it is unavailable, the reason (for the log) naming the field
    with pytest.raises(ModelUnavailableError, match="invalid") as refused:
        PackagedArtifact(path).fetch_manifest()
    assert message in str(refused.value)
