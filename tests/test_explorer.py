"""The model explorer (GET /explore) in a real browser: headless Chromium driven by Selenium, against the local server.

One browser per module (and xdist worker), shared by its tests. Each test opens the page afresh, reads the browser's
console, the charts' own data (Plotly keeps it on each chart's element) and the sliders, and holds the pictures to
what POST /predict answers for the same points. Screenshots go to the test's tmp_path.

Needs Debian's `chromium` and `chromium-driver` (`make browser` installs them; `make test` and `make check` call it).
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import PosteriorModel, load_model
from tests.conftest import DEPLOYED_MODEL, PACKAGE_MODEL, near_training_points, serving

# Reaching the page's idle state is a wait, not a measurement: a generous bound that only a broken page exceeds.
WAIT_S = 60
# The page and a direct request send the same points; the answers differ by no more than rounding does (BLAS sums
# in an order that can depend on the batch).
REL = 1e-9
# A variance far below the prior's (the Park model's, ~1e-7 against ~8) agrees to ~1e-6 relative across batches
# (README, "API"), its square root to half that; the noisy variance in place of the latent one would be far off.
STD_REL = 1e-5
SENSITIVITY_REQUEST = {"n": 1024, "posterior_samples": 0, "seed": 1}  # what the page asks for
MAX_NEAR_POINTS = 500  # training points a slice draws at most (explorer.js)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the browser tests need chromium and chromedriver: `make browser` installs Debian's")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver given by path: Selenium Manager downloads nothing.
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="module")
def keyed_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The local server requiring an API key, as the deployed API does by default, on a model served through GPy."""
    with serving(tiny_model_path, tmp_path_factory.mktemp("serve-keyed"), "--no-jobs", "--api-key", "s3cret") as s:
        yield s


# Legal names that are also names of every JavaScript object's inherited members (and the prototype setter).
PROTOTYPE_NAMES = ("constructor", "__proto__", "toString")
PROTOTYPE_OUTPUT = "valueOf"
UNITS = {"constructor": "m", "__proto__": "kg/s", PROTOTYPE_OUTPUT: "Pa"}  # toString has none


@pytest.fixture(scope="module")
def prototype_names_server(tmp_path_factory: pytest.TempPathFactory):
    """The local server on a small GPy model whose features are named constructor, __proto__ and toString, its
    output valueOf, publishing its training points, with units in its manifest for all but toString."""
    import GPy

    folder = tmp_path_factory.mktemp("prototype-names")
    X = np.random.default_rng(3).uniform(size=(40, 3))
    y = np.sin(3 * X[:, :1]) + X[:, 1:2] ** 2 + 0.5 * X[:, 2:]
    gp = GPy.models.GPRegression(X, y, GPy.kern.RBF(3, lengthscale=0.5, ARD=True))
    gp.likelihood.variance = 1e-4
    gp.optimize(max_iters=300)
    (folder / "model.pkl").write_bytes(pickle.dumps(gp))
    output = folder / "artifact" / "names.npz"
    command = [
        sys.executable, str(PACKAGE_MODEL), str(folder / "model.pkl"), "--features", ",".join(PROTOTYPE_NAMES),
        "--outputs", PROTOTYPE_OUTPUT, "--bounds", ",".join(f"{name}=0:1" for name in PROTOTYPE_NAMES),
        "--name", "prototype-names", "--publish-training-data", "inputs_and_outputs", "--output", str(output),
        "--limits", "constructor=0:",
    ]  # fmt: skip
    packaged = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert packaged.returncode == 0, packaged.stderr
    manifest = manifest_path_for(output)
    document = json.loads(manifest.read_text())
    document.setdefault("units", UNITS)  # the manifest's optional units: {feature or output: unit}
    manifest.write_text(json.dumps(document))
    with serving(output, folder, "--no-jobs") as server:
        yield server


# --- reading the page -------------------------------------------------------------------------------------------


def open_page(browser: webdriver.Chrome, base_url: str) -> None:
    browser.get_log("browser")  # what earlier pages logged
    browser.get(f"{base_url}/explore")
    settled(browser)


def settled(browser: webdriver.Chrome) -> None:
    """Wait until the pictures are drawn for the sliders' values and the sensitivity request has an answer."""
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.execute_script(
            "const s = document.body.dataset, e = window.explorer;"
            "return s.state !== 'loading' && s.state !== 'busy' && !!s.sensitivity && !!e && !e.state.inFlight"
        )
    )


def console_errors(browser: webdriver.Chrome) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def traces(browser: webdriver.Chrome, chart_id: str) -> dict[str, dict[str, Any]]:
    """A chart's traces by name, as Plotly holds them."""
    data = browser.execute_script(
        "return (document.getElementById(arguments[0]).data || []).map(t => ({name: t.name, x: t.x, y: t.y, z: t.z,"
        " yaxis: t.yaxis || 'y', customdata: t.customdata || null,"
        " error_y: t.error_y ? {array: t.error_y.array, arrayminus: t.error_y.arrayminus} : null}))",
        chart_id,
    )
    return {trace["name"]: trace for trace in data}


def sliders(browser: webdriver.Chrome) -> dict[str, float]:
    # As [name, value] pairs: WebDriver drops an object's `__proto__` key on the way out, and it is a legal name.
    pairs = browser.execute_script(
        "return [...document.querySelectorAll('#sliders input')].map(i => [i.dataset.feature, Number(i.value)])"
    )
    return dict(pairs)


def predict(base_url: str, points: list[dict[str, float]], features: list[str], outputs: list[str], output: str):
    """POST /predict (latent variance, as the page asks by default) as columns: mean and standard deviation."""
    columns = {f: [p[f] for p in points] for f in features}
    response = httpx.post(f"{base_url}/predict", params={"variance": "latent"}, json=columns, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json() if len(outputs) == 1 else response.json()[output]
    return answer["mean"], [math.sqrt(v) for v in answer["variance"]]


def variance_rounding(model_path: Path, output: str) -> Callable[[list[dict[str, float]]], np.ndarray]:
    """How far two correct evaluations of the model's latent variance of `output` may differ at each of some points.

    The page's request and the test's hold different batches, which BLAS may sum in different orders. The latent
    variance s2 - |t|^2, t = L^-1 k (exact) or s2 - k A k (sparse), is what is left of the prior variance s2
    once nearly all of it is subtracted, so rounding that is small against s2 can be large against it. Bounded as
    scripts/package_model.py's `rounding_tolerances` bounds it, for two evaluations of the same computation (eps
    per rounding, m points in U, first order): 2 m eps |t| |L^-1| |k| + 2 m eps |t|^2 + 2 eps s2 + 2 |a| |dk|
    (exact; a = A k, dk how far two evaluations put k), or m eps |k| |A| |k| + 2 eps s2 + 2 |a| |dk| (sparse).
    A model served through GPy gets the bound of any backward-stable solve, cond(K) eps s2. In the output's units.
    """
    loaded = load_model(PackagedArtifact(model_path))
    column, features = loaded.manifest.outputs.index(output), loaded.manifest.features
    eps = float(np.finfo(float).eps)
    model = loaded.model

    def bound(points: list[dict[str, float]]) -> np.ndarray:
        X = np.array([[point[f] for f in features] for point in points])
        if not isinstance(model, PosteriorModel):  # served through GPy
            gp = model.gp  # type: ignore[attr-defined]
            sparse = hasattr(gp, "Z")
            K = gp.kern.K(np.asarray(gp.Z if sparse else gp.X))
            if not sparse:
                K[np.diag_indices_from(K)] += float(gp.likelihood.variance)
            scale = gp.normalizer.std[column] ** 2 if gp.normalizer is not None else 1.0
            return np.linalg.cond(K) * eps * gp.kern.Kdiag(X) * scale
        posterior = model.posterior
        m, s2 = posterior.n_inputs, posterior.kernel_variance
        k, dk = posterior.cross_covariance(X), posterior.cross_covariance_rounding(X)
        k_abs = np.abs(k)
        if posterior.cholesky is not None:
            # t = L^-1 k by a triangular solve: backward error (L + dL) t' = k with |dL| <= m eps |L|, so
            # |t' - t| <= m eps |L^-1| |L| |t'|; the variance s2 - t.t then moves by 2 |t|.|dt| + m eps t.t.
            L = posterior.cholesky
            t = posterior.whitened(k.copy())
            dt = m * eps * (np.abs(np.linalg.inv(L)) @ (np.abs(L) @ np.abs(t).T)).T
            a = posterior.solve(k.T).T
            standardised = (
                2 * np.sum(np.abs(t) * dt, axis=1)
                + 2 * m * eps * np.sum(t * t, axis=1)
                + 2 * eps * s2
                + 2 * np.sum(np.abs(a) * dk, axis=1)
            )
        elif posterior.cholesky_inverse is not None:
            inverse = posterior.cholesky_inverse
            t = k @ inverse.T
            a = t @ inverse
            standardised = (
                2 * m * eps * np.sum(np.abs(t) * (k_abs @ np.abs(inverse).T), axis=1)
                + 2 * m * eps * np.sum(t * t, axis=1)
                + 2 * eps * s2
                + 2 * np.sum(np.abs(a) * dk, axis=1)
            )
        else:
            assert posterior.woodbury_inverse is not None
            a = k @ posterior.woodbury_inverse
            standardised = (
                m * eps * np.sum(k_abs * (k_abs @ np.abs(posterior.woodbury_inverse)), axis=1)
                + 2 * eps * s2
                + 2 * np.sum(np.abs(a) * dk, axis=1)
            )
        return standardised * posterior.y_std[column] ** 2

    return bound


def assert_std_matches(
    drawn: list[float], std: list[float], mean: list[float], variance_tolerance: np.ndarray | None
) -> None:
    """The page's standard deviations are /predict's: to `variance_tolerance` (`variance_rounding`, per point) where
    given, else to STD_REL relative. |a - b| = |a^2 - b^2| / (a + b), plus the page's rounding of mean +- 2 sd."""
    if variance_tolerance is None:
        assert drawn == pytest.approx(std, rel=STD_REL)
        return
    page, served, centre = np.asarray(drawn), np.asarray(std), np.abs(np.asarray(mean))
    band_rounding = np.finfo(float).eps * (centre + 2 * served)
    total = page + served
    tolerance = variance_tolerance / np.where(total > 0, total, np.inf) + band_rounding + REL * served
    too_far = np.abs(page - served) > tolerance
    assert not too_far.any(), list(zip(page[too_far], served[too_far], tolerance[too_far], strict=True))[:5]


def assert_pictures_match_predict(
    browser: webdriver.Chrome,
    base_url: str,
    model: dict,
    output: str,
    variance_tolerance: Callable[[list[dict[str, float]]], np.ndarray] | None = None,
) -> None:
    """Every slice and both 2-D pictures are /predict's answers at their points, the other features at the sliders.

    `variance_tolerance`: how far two evaluations of the variance may differ at given points (`variance_rounding`);
    without it the standard deviations agree to STD_REL."""
    features, outputs = model["features"], model["outputs"]
    values = sliders(browser)
    drawn_at = dict(browser.execute_script("return Object.entries(window.explorer.state.last.values)"))
    assert drawn_at == values, "drawn for these values"
    charts = browser.find_elements(By.CSS_SELECTOR, "#slices .slice-chart")
    assert [chart.get_attribute("data-feature") for chart in charts] == features, "one slice per feature"
    for feature in features:
        drawn = traces(browser, f"slice-{feature}")
        xs = drawn["mean"]["x"]
        low, high = model["bounds"][feature]
        assert (xs[0], xs[-1]) == (low, high)
        assert len(xs) > 10
        mean, std = predict(base_url, [{**values, feature: x} for x in xs], features, outputs, output)
        assert drawn["mean"]["y"] == pytest.approx(mean, rel=REL)
        upper, lower = drawn["upper"]["y"], drawn["lower"]["y"]  # the band: mean + and - 2 standard deviations
        assert [(u + lo) / 2 for u, lo in zip(upper, lower, strict=True)] == pytest.approx(mean, rel=REL)
        band = [(u - lo) / 4 for u, lo in zip(upper, lower, strict=True)]
        slice_points = [{**values, feature: x} for x in xs]
        assert_std_matches(band, std, mean, None if variance_tolerance is None else variance_tolerance(slice_points))
    if len(features) < 2:
        return
    a, b = browser.execute_script("return [window.explorer.state.featureA, window.explorer.state.featureB]")
    mean_picture, std_picture = traces(browser, "contour-mean"), traces(browser, "contour-std")
    [mean_trace] = [t for t in mean_picture.values() if t["z"] is not None]
    [std_trace] = [t for t in std_picture.values() if t["z"] is not None]
    xs, ys = mean_trace["x"], mean_trace["y"]
    assert (xs[0], xs[-1], ys[0], ys[-1]) == (*model["bounds"][a], *model["bounds"][b])
    points = [{**values, a: x, b: y} for y in ys for x in xs]
    mean, std = predict(base_url, points, features, outputs, output)
    assert [v for row in mean_trace["z"] for v in row] == pytest.approx(mean, rel=REL)
    drawn = [v for row in std_trace["z"] for v in row]
    assert_std_matches(drawn, std, mean, None if variance_tolerance is None else variance_tolerance(points))


def assert_training_points_near_each_slice(
    browser: webdriver.Chrome,
    base_url: str,
    model: dict,
    output: str,
    headers: dict[str, str] | None = None,
    training: dict | None = None,
) -> int:
    """Each slice draws exactly the published training points near the sliders (as the page's note defines near:
    the root mean square, over the other features, of each difference over its range): at their observed values,
    or, with inputs only published, as ticks on an axis of their own. Returns how many points were drawn.

    `training`: the points the page holds, if not GET /model/training-data's."""
    if training is None:
        training = httpx.get(f"{base_url}/model/training-data", headers=headers, timeout=30).json()
    values, near = sliders(browser), browser.execute_script("return window.explorer.state.near")
    near = math.inf if near is None else near  # JSON has no Infinity: "any distance" arrives as null
    features, bounds = model["features"], model["bounds"]
    drawn_in_all = 0
    for feature in features:
        expected = near_training_points(training, bounds, feature, values, near)
        if len(expected) > MAX_NEAR_POINTS:  # the nearest, ties by a scramble of the index, in the set's order
            expected = sorted(sorted(expected, key=lambda e: (e[1], (e[0] * 2654435761) % 2**32))[:MAX_NEAR_POINTS])
        points = traces(browser, f"slice-{feature}")["training points"]
        assert [index for index, _ in points["customdata"]] == [i for i, _ in expected], feature
        assert [d for _, d in points["customdata"]] == pytest.approx([d for _, d in expected], abs=1e-12)
        assert points["x"] == [training["inputs"][feature][i] for i, _ in expected]
        if training["outputs"] is not None:
            assert points["yaxis"] == "y"
            assert points["y"] == [training["outputs"][output][i] for i, _ in expected]
        else:
            assert points["yaxis"] == "y2"  # ticks along the foot
        drawn_in_all += len(expected)
    return drawn_in_all


def move(browser: webdriver.Chrome, feature: str, key: str, presses: int) -> None:
    """Move a slider with the keyboard, as a person would, then wait for the pictures to follow."""
    before = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-redraws"))
    browser.find_element(By.ID, f"slider-{feature}").send_keys(key * presses)
    WebDriverWait(browser, WAIT_S).until(
        lambda b: int(b.find_element(By.TAG_NAME, "body").get_attribute("data-redraws")) > before
    )
    settled(browser)


def screenshot(browser: webdriver.Chrome, path: Path) -> Path:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, height + 120)
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1000)
    return path


# --- in the browser ---------------------------------------------------------------------------------------------


def test_the_page_draws_the_deployed_model_and_follows_its_sliders(browser, deployed_server, tmp_path: Path):
    base_url, _ = deployed_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    # when
    open_page(browser, base_url)
    # then it loaded without an error, and shows the model card
    assert console_errors(browser) == []
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    card = browser.find_element(By.ID, "card").text
    for fact in (model["name"], model["version"], f"{model['n_train']} points"):
        assert fact in card
    metrics_text = browser.find_element(By.ID, "metrics-table").text
    for output, metrics in (model.get("holdout") or {}).items():
        assert f"{output} hold-out" in metrics_text, metrics
    for output, metrics in (model.get("leave_one_out") or {}).items():  # packaged since the quality gate
        assert f"{output} leave-one-out" in metrics_text, metrics
    # and an output selector only where there is a choice (the Park example has one output)
    assert browser.find_element(By.ID, "output-choice").is_displayed() == (len(model["outputs"]) > 1)
    # and every slice and 2-D picture is /predict's answer at the middle of the bounds
    middle = {f: (low + high) / 2 for f, (low, high) in model["bounds"].items()}
    assert sliders(browser) == pytest.approx(middle)
    output = model["outputs"][0]
    variance_tolerance = variance_rounding(DEPLOYED_MODEL, output)
    assert_pictures_match_predict(browser, base_url, model, output, variance_tolerance)
    # and the training points near each slice, where the manifest publishes them (the Park example does)
    note = browser.find_element(By.ID, "training-note").text
    if model.get("published_training_data"):
        assert "are drawn as" in note
        assert assert_training_points_near_each_slice(browser, base_url, model, output) > 0
    else:
        assert "Training points are not drawn: this model's manifest does not publish" in note
    first, last = model["features"][0], model["features"][-1]
    before = traces(browser, f"slice-{first}")["mean"]["y"]
    screenshot(browser, tmp_path / "explorer-deployed.png")
    # when two sliders move
    move(browser, last, Keys.ARROW_RIGHT, 30)
    move(browser, first, Keys.ARROW_LEFT, 45)
    # then the pictures follow them: new curves, /predict's at the new values
    values = sliders(browser)
    assert values[last] > middle[last]
    assert values[first] < middle[first]
    assert traces(browser, f"slice-{first}")["mean"]["y"] != pytest.approx(before)
    assert_pictures_match_predict(browser, base_url, model, output, variance_tolerance)
    if model.get("published_training_data"):  # the points near the slices follow the sliders too
        assert_training_points_near_each_slice(browser, base_url, model, output)
        # and "any distance" draws every point on every slice, with no request to the API
        redraws = browser.find_element(By.TAG_NAME, "body").get_attribute("data-redraws")
        Select(browser.find_element(By.ID, "near-select")).select_by_visible_text("any distance")
        n_points = httpx.get(f"{base_url}/model/training-data", timeout=30).json()["n_points"]
        drawn = assert_training_points_near_each_slice(browser, base_url, model, output)
        assert drawn == min(n_points, MAX_NEAR_POINTS) * len(model["features"])
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-redraws") == redraws
        Select(browser.find_element(By.ID, "near-select")).select_by_visible_text("15%")
    # and the two features of the 2-D view can be changed (choosing the other's swaps them)
    if len(model["features"]) >= 2:
        Select(browser.find_element(By.ID, "feature-a")).select_by_value(model["features"][1])
        WebDriverWait(browser, WAIT_S).until(
            lambda b: b.execute_script("return window.explorer.state.featureB") == first
        )
        settled(browser)
        assert_pictures_match_predict(browser, base_url, model, output, variance_tolerance)
    assert console_errors(browser) == []
    print(screenshot(browser, tmp_path / "explorer-deployed-moved.png"))


def test_a_slice_draws_at_most_the_nearest_points_of_a_large_published_set(browser, deployed_server):
    # given the page, holding 3,000 training points (set in its state, as if published: whatever the deployed model
    # publishes, the drawing is the page's own)
    base_url, _ = deployed_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    open_page(browser, base_url)
    rng = np.random.default_rng(5)
    n = 3_000
    inputs = {f: rng.uniform(low, high, n).tolist() for f, (low, high) in model["bounds"].items()}
    outputs = {o: rng.normal(size=n).tolist() for o in model["outputs"]}
    training = {"published": "inputs_and_outputs", "n_points": n, "inputs": inputs, "outputs": outputs}
    # when any distance is near (every point of the set qualifies on every slice)
    browser.execute_script(
        "const e = window.explorer; e.state.training = arguments[0];"
        "const select = document.getElementById('near-select'); select.value = 'Infinity';"
        "select.dispatchEvent(new Event('change'));",
        training,
    )
    WebDriverWait(browser, WAIT_S).until(
        lambda b: len(traces(b, f"slice-{model['features'][0]}")["training points"]["x"]) > 0
    )
    # then each slice draws the 500 nearest, in the set's order
    drawn = assert_training_points_near_each_slice(browser, base_url, model, model["outputs"][0], training=training)
    assert drawn == MAX_NEAR_POINTS * len(model["features"])
    assert console_errors(browser) == []


def test_wider_models_get_coarser_pictures_within_one_request_and_the_widest_a_reason(browser, deployed_server):
    base_url, _ = deployed_server
    open_page(browser, base_url)

    def resolution(features: int, max_batch: int = 10_000):
        return browser.execute_script(
            "return window.explorer.resolution(arguments[0], arguments[1])", features, max_batch
        )

    # a few features: 60 points a slice and a 25 x 25 grid; one feature: no grid
    assert resolution(4) == {"slice": 60, "grid": 25}
    assert resolution(1) == {"slice": 60, "grid": 0}

    # wider: as fine as 200,000 numbers (and the batch limit) allow, the slices made coarser before the grid
    def numbers(features: int, slice_points: int, grid: int) -> int:
        return (features * slice_points + grid**2) * features

    previous = 60
    for features in (20, 40, 60, 80, 100, 120):
        found = resolution(features)
        assert numbers(features, found["slice"], found["grid"]) <= 200_000, found
        assert found["slice"] >= 12, found
        assert found["grid"] >= 10, found
        assert found["slice"] <= previous, "never finer for more features"
        previous = found["slice"]
        if found["grid"] < 25:
            assert found["slice"] == 12, "the grid only once the slices are as coarse as they go"
        elif found["slice"] < 60:
            assert numbers(features, found["slice"] + 1, 25) > 200_000, "as fine as fits"
    assert resolution(40) == {"slice": 60, "grid": 25}  # 40 x (2,400 + 625) = 121,000 numbers
    assert resolution(60, max_batch=500) is None  # the deployment's batch limit counts too (60 x 12 > 500)
    # and past ~125 features, nothing fits: the page says so rather than sending what the API would refuse
    assert resolution(150) is None


def assert_sensitivity_matches(browser: webdriver.Chrome, base_url: str, model: dict, output: str) -> None:
    """The bar chart is POST /sensitivity's answer for the chosen output: estimates, and intervals as error bars."""
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-sensitivity") == "drawn"
    answer = httpx.post(f"{base_url}/sensitivity", json=SENSITIVITY_REQUEST, timeout=60)
    assert answer.status_code == 200, answer.text
    result = answer.json() if len(model["outputs"]) == 1 else answer.json()[output]
    bars = traces(browser, "sensitivity")
    features = model["features"]
    for name, key in (("first order", "first_order"), ("total", "total")):
        # one bar per feature, at positions labelled with the features' names (and units)
        assert bars[name]["x"] == list(range(len(features)))
        assert bars[name]["customdata"] == features
        estimates = [result[key][f]["estimate"] for f in features]
        assert bars[name]["y"] == pytest.approx(estimates)
        assert bars[name]["error_y"]["array"] == pytest.approx(
            [max(0, result[key][f]["ci_high"] - e) for f, e in zip(features, estimates, strict=True)]
        )
        assert bars[name]["error_y"]["arrayminus"] == pytest.approx(
            [max(0, e - result[key][f]["ci_low"]) for f, e in zip(features, estimates, strict=True)]
        )


def test_the_sensitivity_chart_shows_the_sobol_indices_post_sensitivity_answers(browser, deployed_server):
    base_url, _ = deployed_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    open_page(browser, base_url)
    assert console_errors(browser) == []
    assert_sensitivity_matches(browser, base_url, model, model["outputs"][0])


def test_a_two_output_model_has_an_output_selector_and_draws_the_chosen_output(browser, plant_server, tmp_path: Path):
    base_url, _ = plant_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    assert len(model["outputs"]) == 2
    open_page(browser, base_url)
    assert console_errors(browser) == []
    selector = Select(browser.find_element(By.ID, "output-select"))
    assert [o.get_attribute("value") for o in selector.options] == model["outputs"]
    # (its manifest publishes no training points: the page says so, and draws none)
    assert "published_training_data" not in model
    assert "does not publish the 60 points" in browser.find_element(By.ID, "training-note").text
    assert not browser.find_element(By.ID, "near-choice").is_displayed()
    assert "training points" not in traces(browser, f"slice-{model['features'][0]}")
    first, second = model["outputs"]
    assert_pictures_match_predict(browser, base_url, model, first)
    # when the second output is chosen
    selector.select_by_value(second)
    feature = model["features"][0]
    WebDriverWait(browser, WAIT_S).until(
        lambda b: (
            b.execute_script("return document.getElementById(arguments[0]).layout.yaxis.title.text", f"slice-{feature}")
            == second
        )
    )
    # then every picture is that output's, and follows the sliders
    assert_pictures_match_predict(browser, base_url, model, second)
    assert_sensitivity_matches(browser, base_url, model, second)
    move(browser, model["features"][1], Keys.ARROW_RIGHT, 20)
    assert_pictures_match_predict(browser, base_url, model, second)
    assert console_errors(browser) == []
    print(screenshot(browser, tmp_path / "explorer-two-outputs.png"))


def test_with_an_api_key_the_page_is_open_and_asks_for_the_key_once(browser, keyed_server):
    # (the model is a pickle, served through GPy, for which POST /sensitivity answers 501: the page says why)
    base_url, _ = keyed_server
    # the page and its files need no key; the API does
    assert httpx.get(f"{base_url}/explore", timeout=30).status_code == 200
    assert httpx.get(f"{base_url}/explore/explorer.js", timeout=30).status_code == 200
    assert httpx.get(f"{base_url}/model", timeout=30).status_code == 403
    browser.get(f"{base_url}/explore")
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_element(By.ID, "key-form").is_displayed())
    # a wrong key is refused and asked for again
    browser.find_element(By.ID, "key-input").send_keys("guess", Keys.ENTER)
    WebDriverWait(browser, WAIT_S).until(lambda b: "refused" in b.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "key-form").is_displayed()
    # the right one draws the model, and is kept for the tab
    browser.find_element(By.ID, "key-input").send_keys("s3cret", Keys.ENTER)
    settled(browser)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    assert browser.execute_script("return sessionStorage.getItem('gpr-surrogate-api-key')") == "s3cret"
    browser.get_log("browser")
    browser.refresh()
    settled(browser)
    assert not browser.find_element(By.ID, "key-form").is_displayed()
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-redraws") == "1"
    # and the training inputs the manifest publishes (GET /model/training-data, with the key) are ticks on the slices
    model = httpx.get(f"{base_url}/model", headers={"x-api-key": "s3cret"}, timeout=30).json()
    assert model["published_training_data"] == "inputs"
    assert "ticks along the foot of each slice" in browser.find_element(By.ID, "training-note").text
    assert browser.execute_script("return window.explorer.state.training.outputs") is None
    assert_training_points_near_each_slice(browser, base_url, model, model["outputs"][0], {"x-api-key": "s3cret"})
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-sensitivity") == "unavailable"
    assert "analysis not available" in browser.find_element(By.ID, "sensitivity-note").text
    assert not browser.find_element(By.ID, "sensitivity").is_displayed()
    refused = "/sensitivity - Failed to load resource: the server responded with a status of 501"
    assert [message for message in console_errors(browser) if refused not in message] == []
    browser.execute_script("sessionStorage.clear()")


def axis_titles(browser: webdriver.Chrome, chart_id: str) -> tuple[str, str]:
    return tuple(
        browser.execute_script(
            "const l = document.getElementById(arguments[0]).layout; return [l.xaxis.title.text, l.yaxis.title.text]",
            chart_id,
        )
    )


def test_features_named_like_javascripts_own_members_are_drawn_with_their_units(browser, prototype_names_server):
    # given a model whose features are named constructor, __proto__ and toString (legal names), with units
    base_url, _ = prototype_names_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    assert model["features"] == list(PROTOTYPE_NAMES)
    assert model["units"] == UNITS
    # when
    open_page(browser, base_url)
    # then every picture is drawn, and is /predict's answer, as for any model
    assert console_errors(browser) == []
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    assert set(sliders(browser)) == set(PROTOTYPE_NAMES)
    assert_pictures_match_predict(browser, base_url, model, PROTOTYPE_OUTPUT)
    assert assert_training_points_near_each_slice(browser, base_url, model, PROTOTYPE_OUTPUT) > 0
    assert_sensitivity_matches(browser, base_url, model, PROTOTYPE_OUTPUT)
    # and the card shows the one physical limit the manifest gives, on its feature's row
    rows = browser.find_element(By.ID, "features-table").find_elements(By.CSS_SELECTOR, "tbody tr")
    limits = {row.find_element(By.TAG_NAME, "th").text: row.find_elements(By.TAG_NAME, "td")[-1].text for row in rows}
    assert limits == {"constructor (m)": "≥ 0", "__proto__ (kg/s)": "—", "toString": "—"}
    # and the axes carry the units the manifest gives, and only those
    assert axis_titles(browser, "slice-constructor") == ("constructor (m)", "valueOf (Pa)")
    assert axis_titles(browser, "slice-__proto__") == ("__proto__ (kg/s)", "valueOf (Pa)")
    assert axis_titles(browser, "slice-toString") == ("toString", "valueOf (Pa)")
    assert axis_titles(browser, "contour-mean") == ("constructor (m)", "__proto__ (kg/s)")
    ticks = browser.execute_script("return document.getElementById('sensitivity').layout.xaxis.ticktext")
    assert ticks == ["constructor (m)", "__proto__ (kg/s)", "toString"]
    # and when a slider moves, the pictures follow
    move(browser, "__proto__", Keys.ARROW_RIGHT, 20)
    assert sliders(browser)["__proto__"] > 0.5
    assert_pictures_match_predict(browser, base_url, model, PROTOTYPE_OUTPUT)
    assert console_errors(browser) == []


def test_a_model_without_units_has_bare_axis_titles(browser, plant_server):
    base_url, _ = plant_server
    model = httpx.get(f"{base_url}/model", timeout=30).json()
    assert "units" not in model
    open_page(browser, base_url)
    first = model["features"][0]
    assert axis_titles(browser, f"slice-{first}") == (first, model["outputs"][0])


def test_the_plot_toolbar_sits_above_the_plot_area_never_over_the_data(browser, deployed_server):
    # (the page asks for it on hover only; where the browser says it cannot hover, as headless Chromium does,
    # Plotly shows it always: where it sits is what matters either way)
    base_url, _ = deployed_server
    open_page(browser, base_url)
    charts = [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")]
    assert {"contour-mean", "contour-std", "sensitivity"} <= set(charts)
    assert len(charts) > 3
    for chart in charts:
        # where Plotly put the toolbar and the plot area, in the chart's own coordinates
        placed = browser.execute_script(
            "const gd = document.getElementById(arguments[0]), box = gd.getBoundingClientRect();"
            "const r = gd.querySelector('.modebar').getBoundingClientRect();"
            "return {bottom: r.bottom - box.top, height: r.height, plotTop: gd._fullLayout._size.t}",
            chart,
        )
        assert placed["height"] > 0, chart
        assert placed["bottom"] <= placed["plotTop"], (chart, placed)


def test_the_local_server_serves_the_page_from_the_explorer_function_with_get_and_head_only(deployed_server):
    # (as the deployed API: the template's events for /explore are GET and HEAD of ExplorerFunction alone)
    base_url, log = deployed_server
    page = httpx.get(f"{base_url}/explore", timeout=30)
    head = httpx.head(f"{base_url}/explore/explorer.js", timeout=30)
    refused = httpx.post(f"{base_url}/explore", json={}, timeout=30)
    assert (page.status_code, head.status_code, head.content) == (200, 200, b"")
    assert page.headers["x-content-type-options"] == "nosniff"
    # any other method: API Gateway's refusal, before any function runs
    assert (refused.status_code, refused.json()) == (403, {"message": "Missing Authentication Token"})
    assert "ExplorerFunction: 3 paths (/explore /explore/{asset} /models/{name}/explore)" in log.read_text()


def requested_paths(browser: webdriver.Chrome) -> list[str]:
    """The paths the page fetched since it loaded (the browser's resource timing), in order."""
    return browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch')"
        ".map(e => new URL(e.name).pathname)"
    )


def test_the_model_picker_lists_the_models_and_opens_a_models_page_drawn_from_its_routes(
    browser, deployed_server, tmp_path: Path
):
    # given the API's models, and the version its packaged model answers as
    base_url, _ = deployed_server
    listed = httpx.get(f"{base_url}/models", timeout=30).json()["models"]
    answered = httpx.get(f"{base_url}/model", timeout=30)
    model, version = answered.json(), answered.headers["X-Model-Version"]
    # when the page opens at /explore
    open_page(browser, base_url)
    # then the picker lists every model, the packaged one chosen, and the page says which version it drew
    picker = Select(browser.find_element(By.ID, "model-select"))
    assert browser.find_element(By.ID, "model-choice").is_displayed()
    assert [o.text.split(" ")[0] for o in picker.options if o.get_attribute("value") == ""] == [model["name"]]
    assert len(picker.options) >= len(listed)
    assert picker.first_selected_option.get_attribute("value") == ""
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-model-version") == version
    assert browser.find_element(By.ID, "model-version").text == f"Drawn by {version}."
    assert "/model" in requested_paths(browser)
    # when a model is chosen (here the packaged model by name@alias, which every API serves)
    browser.execute_script(
        "const s = document.getElementById('model-select'); s.add(new Option('by alias', arguments[0]));"
        "s.value = arguments[0]; s.dispatchEvent(new Event('change'));",
        f"{model['name']}@live",
    )
    WebDriverWait(browser, WAIT_S).until(lambda b: b.current_url.endswith(f"/models/{model['name']}@live/explore"))
    settled(browser)
    # then its page draws from the model's own routes, the pictures being what its /predict answers
    paths = requested_paths(browser)
    prefix = f"/models/{model['name']}@live"
    assert {f"{prefix}/manifest", f"{prefix}/predict", f"{prefix}/sensitivity"} <= set(paths), paths
    assert not {"/model", "/predict", "/sensitivity"} & set(paths), paths
    assert browser.execute_script("return window.explorer.model") == f"{model['name']}@live"
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-model-version") == version
    assert_pictures_match_predict(
        browser, base_url, model, model["outputs"][0], variance_rounding(DEPLOYED_MODEL, model["outputs"][0])
    )
    # and its picker shows the packaged model chosen (it is the one served by that name)
    picker = Select(browser.find_element(By.ID, "model-select"))
    assert picker.first_selected_option.get_attribute("value") == ""
    assert console_errors(browser) == []
    print(screenshot(browser, tmp_path / "explorer-model-page.png"))


@pytest.fixture(scope="module")
def registry_server(tiny_posterior_path: Path, plant_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The local server on the tiny Park model, its registry holding the plant model (live on version 1)."""
    from gpr_client import SurrogateClient

    folder = tmp_path_factory.mktemp("serve-registry")
    with serving(tiny_posterior_path, folder) as server:  # with the jobs' moto server, which holds the registry
        with SurrogateClient(server[0]) as admin:  # the local server's writes are open (no admin key asked for)
            admin.publish(plant_model_path, "plant")
            admin.promote("plant", 1)
        yield server


def test_choosing_a_registry_model_in_the_picker_draws_it_and_says_which_version(
    browser, registry_server, plant_model_path: Path, tmp_path: Path
):
    # given the page on the packaged model, and the plant model in the registry
    base_url, _ = registry_server
    plant = httpx.get(f"{base_url}/models/plant/manifest", timeout=30).json()
    open_page(browser, base_url)
    picker = Select(browser.find_element(By.ID, "model-select"))
    labels = {o.get_attribute("value"): o.text for o in picker.options}
    assert labels["plant@live"] == "plant@live (version 1)"
    assert picker.first_selected_option.get_attribute("value") == ""
    # when the plant model is chosen
    picker.select_by_value("plant@live")
    WebDriverWait(browser, WAIT_S).until(lambda b: b.current_url.endswith("/models/plant@live/explore"))
    settled(browser)
    # then the page is the plant model's, drawn from its routes, and says version 1 drew it
    assert browser.find_element(By.ID, "title").text.startswith("plant")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-model-version") == "plant/1"
    assert browser.find_element(By.ID, "model-version").text == "Drawn by plant/1."
    for output in plant["outputs"]:
        Select(browser.find_element(By.ID, "output-select")).select_by_value(output)
        settled(browser)
        assert_pictures_match_predict(browser, f"{base_url}/models/plant", plant, output)
    assert Select(browser.find_element(By.ID, "model-select")).first_selected_option.get_attribute("value") == (
        "plant@live"
    )
    assert console_errors(browser) == []
    print(screenshot(browser, tmp_path / "explorer-registry-model.png"))
