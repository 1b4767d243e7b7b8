"""The client's pictures (the `plot` extra): matplotlib Figures of what the service answers, rendered to PNG (Agg)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
from gpr_client import SurrogateClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import FillBetweenPolyCollection, PathCollection
from matplotlib.container import BarContainer

from tests.conftest import near_training_points

matplotlib.use("Agg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rendered(figure, path: Path) -> Path:
    figure.savefig(path, dpi=80)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000, "a picture, not an empty canvas"
    return path


def direct(base_url: str, features: tuple[str, ...], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = {name: X[:, i].tolist() for i, name in enumerate(features)}
    answer = httpx.post(f"{base_url}/predict", params={"variance": "latent"}, json=body, timeout=60).json()
    per_output = [answer] if "mean" in answer else list(answer.values())
    mean = np.column_stack([o["mean"] for o in per_output])
    return mean, np.sqrt(np.column_stack([o["variance"] for o in per_output]))


def test_slices_draw_the_mean_and_band_along_each_feature_at_the_held_values(local_server, tmp_path: Path):
    base_url, _ = local_server
    with SurrogateClient(base_url) as client:
        info = client.model()
        at = {"x1": 0.2, "x4": 0.9}
        figure = client.plot_slices(at, points=25)
    rendered(figure, tmp_path / "slices.png")
    axes = figure.axes
    assert [ax.get_xlabel() for ax in axes] == list(info.features)
    assert axes[0].get_ylabel() == "y"
    held = {"x1": 0.2, "x2": 0.5, "x3": 0.5, "x4": 0.9}
    for i, (ax, feature) in enumerate(zip(axes, info.features, strict=True)):
        mean_line, held_line = ax.lines
        x = mean_line.get_xdata()
        assert (x[0], x[-1], len(x)) == (*info.bounds[feature], 25)
        assert held_line.get_xdata()[0] == held[feature]
        X = np.tile([held[f] for f in info.features], (25, 1))
        X[:, i] = x
        mean, std = direct(base_url, info.features, X)
        np.testing.assert_allclose(mean_line.get_ydata(), mean[:, 0], rtol=1e-9)
        [band] = [c for c in ax.collections if isinstance(c, FillBetweenPolyCollection)]
        upper = band.get_paths()[0].vertices[:, 1].max()
        assert upper == pytest.approx(float(np.max(mean[:, 0] + 2 * std[:, 0])), rel=1e-9)


def test_slices_draw_the_published_training_points_near_the_held_values(local_server, tmp_path: Path):
    # given a model publishing its training inputs and outputs (the tiny Park model)
    base_url, _ = local_server
    training = httpx.get(f"{base_url}/model/training-data", timeout=30).json()
    assert training["published"] == "inputs_and_outputs"
    held = {"x1": 0.2, "x2": 0.5, "x3": 0.5, "x4": 0.9}
    with SurrogateClient(base_url) as client:
        info = client.model()
        # when
        figure = client.plot_slices({"x1": 0.2, "x4": 0.9}, points=20, near=0.3)
        without = client.plot_slices(points=20, near=None)
    rendered(figure, tmp_path / "slices-with-points.png")
    # then each slice has a dot per nearby training point, at its feature's value and its output
    drawn = 0
    for ax, feature in zip(figure.axes, info.features, strict=True):
        chosen = [i for i, _ in near_training_points(training, info.bounds, feature, held, 0.3)]
        [dots] = [c for c in ax.collections if isinstance(c, PathCollection)]
        expected = [(training["inputs"][feature][i], training["outputs"]["y"][i]) for i in chosen]
        np.testing.assert_array_equal(dots.get_offsets(), np.array(expected).reshape(-1, 2))
        drawn += len(chosen)
    assert drawn > 0
    # and near=None draws none
    assert not [c for ax in without.axes for c in ax.collections if isinstance(c, PathCollection)]


def test_slices_of_a_model_publishing_inputs_only_draw_them_as_ticks_along_the_foot(tmp_path: Path):
    # given a service (scripted) whose model publishes its training inputs, not their outputs
    inputs = {"x1": [0.1, 0.5, 0.9], "x2": [0.5, 0.5, 0.0]}
    model = {"name": "m", "version": "1", "features": ["x1", "x2"], "outputs": ["y"],
             "bounds": {"x1": [0.0, 1.0], "x2": [0.0, 1.0]}, "limits": {"max_batch_size": 10_000},
             "published_training_data": "inputs"}  # fmt: skip
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/model":
            return httpx.Response(200, json=model)
        if request.url.path == "/model/training-data":
            return httpx.Response(200, json={"published": "inputs", "n_points": 3, "inputs": inputs, "outputs": None})
        n = len(json.loads(request.content)["x1"])
        return httpx.Response(200, json={"mean": [1.0] * n, "variance": [0.01] * n})

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when
        figure = client.plot_slices(points=10, near=0.1)
        client.plot_slices(points=10)
    rendered(figure, tmp_path / "ticks.png")
    # then along x1 (x2 held at 0.5) the two points with x2 = 0.5 are ticks at the foot, in axes coordinates
    x1_axes, x2_axes = figure.axes
    [ticks] = [c for c in x1_axes.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(ticks.get_offsets(), [[0.1, 0.03], [0.5, 0.03]])
    assert ticks.get_offset_transform() == x1_axes.get_xaxis_transform()
    # and along x2 (x1 held at 0.5) only the middle point is near
    [ticks] = [c for c in x2_axes.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(ticks.get_offsets(), [[0.5, 0.03]])
    # and the points were fetched once
    assert asked.count("/model/training-data") == 1


def test_slices_and_contours_of_a_two_output_model_have_a_row_per_output(plant_server, tmp_path: Path):
    base_url, _ = plant_server
    with SurrogateClient(base_url) as client:
        info = client.model()
        slices = client.plot_slices(points=20)
        contours = client.plot_contour("temperature", "pressure", at={"flow_rate": 1.5}, points=15)
        one = client.plot_contour("pressure", "flow_rate", output="purity", points=10)
        with pytest.raises(ValueError, match="two different"):
            client.plot_contour("pressure", "pressure")
        with pytest.raises(ValueError, match="unknown output"):
            client.plot_slices(output="yield")
        with pytest.raises(ValueError, match="unknown feature"):
            client.plot_slices({"altitude": 3.0})
    rendered(slices, tmp_path / "slices.png")
    assert not [c for ax in slices.axes for c in ax.collections if isinstance(c, PathCollection)], "none published"
    rendered(contours, tmp_path / "contours.png")
    rendered(one, tmp_path / "one-output.png")
    assert len(slices.axes) == len(info.features) * 2
    assert [ax.get_ylabel() for ax in slices.axes[:: len(info.features)]] == list(info.outputs)
    # the contour picture: mean and standard deviation per output (each with its colour bar)
    panels = [ax for ax in contours.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "mean of conversion", "standard deviation of conversion", "mean of purity", "standard deviation of purity"
    ]  # fmt: skip
    assert [ax.get_title() for ax in one.axes if ax.get_title()] == ["mean of purity", "standard deviation of purity"]
    # whose filled levels span what /predict answers over the grid, the third feature held at 1.5
    xs, ys = np.linspace(250, 400, 15), np.linspace(1, 10, 15)
    grid_x, grid_y = np.meshgrid(xs, ys)
    X = np.column_stack([grid_x.ravel(), grid_y.ravel(), np.full(grid_x.size, 1.5)])
    mean, std = direct(base_url, info.features, X)
    for ax, values in zip(panels, (mean[:, 0], std[:, 0], mean[:, 1], std[:, 1]), strict=True):
        [filled] = [c for c in ax.collections if hasattr(c, "levels")]
        assert filled.levels[0] <= values.min()
        assert values.max() <= filled.levels[-1]
        assert filled.levels[-1] - filled.levels[0] < 2 * (values.max() - values.min())


CONTRACT_ANSWER = {  # POST /sensitivity's answer for one output, as its contract gives it
    "seed": 1, "n": 1024, "evaluations": 6144, "posterior_samples": 0, "confidence": 0.95,
    "variance": {"estimate": 12.3, "ci_low": 11.9, "ci_high": 12.8},
    "first_order": {f"x{i}": {"estimate": e, "ci_low": e - 0.02, "ci_high": e + 0.03}
                    for i, e in zip(range(1, 5), (0.31, 0.02, 0.12, 0.45), strict=True)},
    "total": {f"x{i}": {"estimate": e, "ci_low": e - 0.03, "ci_high": e + 0.01}
              for i, e in zip(range(1, 5), (0.35, 0.03, 0.16, 0.5), strict=True)},
}  # fmt: skip


def test_sensitivity_bars_are_the_indices_with_their_intervals(local_server, tmp_path: Path):
    base_url, _ = local_server
    with SurrogateClient(base_url) as client:
        figure = client.plot_sensitivity(CONTRACT_ANSWER)
        rendered(figure, tmp_path / "sensitivity.png")
        [ax] = figure.axes
        first, total = (c for c in ax.containers if isinstance(c, BarContainer))
        assert [bar.get_height() for bar in first] == pytest.approx([0.31, 0.02, 0.12, 0.45])
        assert [bar.get_height() for bar in total] == pytest.approx([0.35, 0.03, 0.16, 0.5])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["x1", "x2", "x3", "x4"]
        # the error bars' caps are the intervals' ends
        low_caps, high_caps = first.errorbar.lines[1]
        assert list(low_caps.get_ydata()) == pytest.approx([0.29, 0.0, 0.10, 0.43])
        assert list(high_caps.get_ydata()) == pytest.approx([0.34, 0.05, 0.15, 0.48])
        low_caps, high_caps = total.errorbar.lines[1]
        assert list(low_caps.get_ydata()) == pytest.approx([0.32, 0.0, 0.13, 0.47])
        assert list(high_caps.get_ydata()) == pytest.approx([0.36, 0.04, 0.17, 0.51])
        # without an answer to draw, it asks the service
        asked = client.plot_sensitivity(n=256, seed=3)
        rendered(asked, tmp_path / "asked.png")
        body = {"n": 256, "posterior_samples": 0, "seed": 3}
        answer = httpx.post(f"{base_url}/sensitivity", json=body, timeout=60).json()
        bars = [c for c in asked.axes[0].containers if isinstance(c, BarContainer)]
        for container, key in zip(bars, ("first_order", "total"), strict=True):
            expected = [answer[key][f]["estimate"] for f in ("x1", "x2", "x3", "x4")]
            assert [bar.get_height() for bar in container] == pytest.approx(expected)


# --- a wide model with units (the Borehole function, 8 features in physical units), scripted --------------------

BOREHOLE_BOUNDS = {
    "rw": (0.05, 0.15), "r": (100.0, 50_000.0), "Tu": (63_070.0, 115_600.0), "Hu": (990.0, 1_110.0),
    "Tl": (63.1, 116.0), "Hl": (700.0, 820.0), "L": (1_120.0, 1_680.0), "Kw": (9_855.0, 12_045.0),
}  # fmt: skip
BOREHOLE_UNITS = {"rw": "m", "r": "m", "Tu": "m²/yr", "Hu": "m", "Tl": "m²/yr", "Hl": "m", "L": "m", "Kw": "m/yr",
                  "flow": "m³/yr"}  # fmt: skip


EVEN_INDICES = {f: {"estimate": 0.1, "ci_low": 0.05, "ci_high": 0.2} for f in BOREHOLE_BOUNDS}
BOREHOLE_INDICES = {"seed": 1, "n": 64, "posterior_samples": 0, "confidence": 0.95,
                    "first_order": EVEN_INDICES, "total": EVEN_INDICES}  # fmt: skip


def borehole(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Water flow through a borehole (m³/yr): Harper and Gupta (1983)."""
    rw, r, Tu, Hu, Tl, Hl, L, Kw = (np.asarray(columns[f]) for f in BOREHOLE_BOUNDS)
    log_ratio = np.log(r / rw)
    return 2 * np.pi * Tu * (Hu - Hl) / (log_ratio * (1 + 2 * L * Tu / (log_ratio * rw**2 * Kw) + Tu / Tl))


def scripted_manifest(name: str, bounds: dict[str, tuple[float, float]], output: str) -> dict:
    """GET /model's answer for a model of these features and one output (no units)."""
    return {"name": name, "version": "1", "features": list(bounds), "outputs": [output],
            "bounds": {f: list(b) for f, b in bounds.items()}, "limits": {"max_batch_size": 10_000}}  # fmt: skip


def borehole_client(std: float, units: dict[str, str] | None = BOREHOLE_UNITS) -> SurrogateClient:
    """A client of a scripted service: the Borehole function as the mean, `std` its standard deviation everywhere,
    and a manifest carrying units (GET /model's optional top-level "units") unless `units` is None."""
    model = scripted_manifest("borehole", BOREHOLE_BOUNDS, "flow")
    if units is not None:
        model["units"] = units

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=model)
        mean = borehole(json.loads(request.content))
        return httpx.Response(200, json={"mean": mean.tolist(), "variance": [std**2] * len(mean)})

    return SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler))


def grid_of(figure) -> set[tuple[int, int]]:
    """(row, column) of each panel with an x label (colour bars have none)."""
    spots = set()
    for ax in figure.axes:
        if ax.get_xlabel():
            spec = ax.get_subplotspec()
            spots.add((spec.rowspan.start, spec.colspan.start))
    return spots


def overlapping_tick_labels(figure) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels (and x10^k factors) whose boxes overlap once the figure is drawn with Agg."""
    FigureCanvasAgg(figure).draw()
    boxes = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = high - low
            drawn = [  # the locator's ticks beyond the axis's ends are not drawn
                tick.label1
                for tick, at in zip(axis.get_major_ticks(), axis.get_majorticklocs(), strict=True)
                if low - 1e-9 * span <= at <= high + 1e-9 * span
            ]
            texts = [*drawn, axis.get_offset_text()]
            boxes += [(t.get_text(), t.get_window_extent()) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]


def legend_texts(figure) -> list[str]:
    return [t.get_text() for legend in figure.legends for t in legend.get_texts()]


def test_the_slices_of_eight_features_wrap_into_two_rows_of_four(tmp_path: Path):
    # given a model of 8 features
    with borehole_client(std=5.0) as client:
        # when its slices are drawn with the defaults, then with 2 columns and a size of the caller's
        figure = client.plot_slices(points=15)
        narrow = client.plot_slices(points=15, ncols=2, figsize=(7.0, 10.0))
        with pytest.raises(ValueError, match="ncols must be at least 1"):
            client.plot_slices(points=15, ncols=0)
        # and the other pictures take a size too
        sized = (client.plot_contour("Tu", "r", points=5, figsize=(8.0, 3.0)),
                 client.plot_sensitivity(BOREHOLE_INDICES, figsize=(9.0, 3.0)))  # fmt: skip
    rendered(figure, tmp_path / "borehole.png")
    # then the panels fill a grid of 2 rows and 4 columns, each about as wide as the row's height
    assert grid_of(figure) == {(row, column) for row in range(2) for column in range(4)}
    width, height = figure.get_size_inches()
    assert (width, height) == pytest.approx((4 * 3.2, 2 * 2.5 + 0.9))
    # and the caller's columns and size are kept
    assert grid_of(narrow) == {(row, column) for row in range(4) for column in range(2)}
    assert tuple(narrow.get_size_inches()) == (7.0, 10.0)
    assert [tuple(figure.get_size_inches()) for figure in sized] == [(8.0, 3.0), (9.0, 3.0)]


def test_five_features_fill_rows_evenly_and_leave_no_empty_panel():
    # given a model of 5 features
    model = scripted_manifest("m", {f"x{i}": (0.0, 1.0) for i in range(5)}, "y")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=model)
        n = len(json.loads(request.content)["x0"])
        return httpx.Response(200, json={"mean": [1.0] * n, "variance": [0.01] * n})

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when its slices are drawn
        figure = client.plot_slices(points=5)
    # then they fill 3 + 2 panels, with no empty sixth
    assert grid_of(figure) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}
    assert len(figure.axes) == 5


def test_every_slice_names_its_feature_and_unit_and_each_row_its_output_and_unit():
    # given the model with units in its manifest, and without
    with borehole_client(std=5.0) as client, borehole_client(std=5.0, units=None) as without:
        # when the slices are drawn
        figure = client.plot_slices(points=15)
        bare = without.plot_slices(points=15)
    # then each x axis names its feature and unit, each row's first y axis the output and its unit
    assert [ax.get_xlabel() for ax in figure.axes] == [f"{f} ({BOREHOLE_UNITS[f]})" for f in BOREHOLE_BOUNDS]
    assert [ax.get_ylabel() for ax in figure.axes] == ["flow (m³/yr)", "", "", "", "flow (m³/yr)", "", "", ""]
    # a manifest without units: the names alone
    assert [ax.get_xlabel() for ax in bare.axes] == list(BOREHOLE_BOUNDS)
    assert bare.axes[4].get_ylabel() == "flow"


def test_no_two_tick_labels_overlap_on_a_wide_model():
    # given features spanning 0.05-0.15 and 63,070-115,600 (the labels that ran together as "100000110000")
    with borehole_client(std=5.0) as client:
        # when each picture is drawn with Agg
        pictures = {
            "slices": client.plot_slices(points=15),
            "slices of 2 columns": client.plot_slices(points=15, ncols=2),
            "contour": client.plot_contour("Tu", "r", points=10),
            "sensitivity": client.plot_sensitivity(BOREHOLE_INDICES),
        }
    # then no tick label runs into another
    for name, figure in pictures.items():
        assert overlapping_tick_labels(figure) == [], name


def test_the_band_is_in_the_legend_only_where_it_can_be_seen():
    # given the same mean with a band 2 sd = 10 m³/yr wide (seen), then 2e-6 m³/yr (under the line)
    with borehole_client(std=5.0) as client:
        seen = client.plot_slices(points=15)
    with borehole_client(std=1e-6) as client:
        hidden = client.plot_slices(points=15)
    # then the band is in the first legend and no panel notes it
    assert legend_texts(seen) == [r"$\pm 2\sigma$", "mean"]
    assert not [t for ax in seen.axes for t in ax.texts]
    # and the second legend leaves it out, each panel saying why
    assert legend_texts(hidden) == ["mean"]
    assert [[t.get_text() for t in ax.texts] for ax in hidden.axes] == [["band narrower than the line"]] * 8


def test_contour_colour_bars_name_the_statistic_output_and_unit():
    # given the model with units; when a contour is drawn
    with borehole_client(std=5.0) as client:
        figure = client.plot_contour("Tu", "r", points=10)
    # then its axes name the features and units, its colour bars the statistic, the output and its unit
    panels = [ax for ax in figure.axes if ax.get_title()]
    bars = [ax for ax in figure.axes if not ax.get_title()]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in panels] == [("Tu (m²/yr)", "r (m)")] * 2
    assert [ax.get_ylabel() for ax in bars] == ["mean of flow (m³/yr)", "std of flow (m³/yr)"]
    # and its title holds the other features at plain numbers with their units, no e-notation
    title = figure.get_suptitle()
    assert "Kw = 10,950 m/yr" in title
    assert "e+" not in title


def test_the_slices_title_says_whose_band_it_is_in_words():
    with borehole_client(std=5.0) as client:
        latent, noisy = client.plot_slices(points=5, latent=True), client.plot_slices(points=5, latent=False)
    assert "of the function" in latent.get_suptitle()
    assert "of an observation" in noisy.get_suptitle()
    assert "latent" not in latent.get_suptitle() + noisy.get_suptitle()


def test_the_sensitivity_title_says_n_and_the_posterior_draws_used():
    # given answers computed without posterior draws and with 20
    with borehole_client(std=5.0) as client:
        # when each is drawn
        mean_only = client.plot_sensitivity(BOREHOLE_INDICES)
        with_draws = client.plot_sensitivity({**BOREHOLE_INDICES, "n": 512, "posterior_samples": 20})
    # then the title says n and k (none: the mean's indices)
    assert mean_only.axes[0].get_title() == (
        "flow: n = 64, k = 0 posterior draws (the mean's indices), seed 1, 95% intervals"
    )
    assert with_draws.axes[0].get_title() == "flow: n = 512, k = 20 posterior draws, seed 1, 95% intervals"
