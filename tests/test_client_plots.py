"""The client's pictures (the `plot` extra): matplotlib Figures of what the service answers, rendered to PNG (Agg)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
from gpr_client import SurrogateClient
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
