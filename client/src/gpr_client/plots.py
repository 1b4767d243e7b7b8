"""Pictures of the served model with matplotlib (the `plot` extra): what the API's /explore page draws, as Figures.

`SurrogateClient.plot_slices()`, `.plot_contour(a, b)` and `.plot_sensitivity()` call these. Each builds a
`matplotlib.figure.Figure` without pyplot (no global figure list, no GUI backend): show it in a notebook, or
`fig.savefig("slices.png")`. Each picture's points go out in one `predict` call (split into requests within the
service's batch limit if needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("the plots need matplotlib: pip install 'gpr-surrogate-client[plot]'") from exc

if TYPE_CHECKING:
    from gpr_client.client import ModelInfo, SurrogateClient

BAND_ALPHA = 0.25


def held_values(info: ModelInfo, at: Mapping[str, float] | None) -> dict[str, float]:
    """Where the other features are held: `at` where given, else the middle of each feature's bounds."""
    unknown = sorted(set(at or {}) - set(info.features))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)} (the model's: {', '.join(info.features)})")
    values = {f: (low + high) / 2 for f, (low, high) in info.bounds.items()}
    values.update({f: float(v) for f, v in (at or {}).items()})
    return values


def chosen_outputs(info: ModelInfo, output: str | None) -> list[str]:
    """`output`, or every output (a row of pictures each) when it is None."""
    if output is None:
        return list(info.outputs)
    if output not in info.outputs:
        raise ValueError(f"unknown output {output!r} (the model's: {', '.join(info.outputs)})")
    return [output]


def _describe(values: Mapping[str, float], leave_out: tuple[str, ...]) -> str:
    held = [f"{f} = {v:.4g}" for f, v in values.items() if f not in leave_out]
    return ", ".join(held) if held else "no other feature"


def near_points(info: ModelInfo, inputs: np.ndarray, feature: str, values: Mapping[str, float], near: float):
    """Indices of the training points near the slice along `feature` (as the explorer page chooses them), and their
    distances: the root mean square, over the other features, of each difference over its range."""
    others = [i for i, f in enumerate(info.features) if f != feature]
    if not others:
        return np.arange(len(inputs)), np.zeros(len(inputs))
    ranges = np.array([info.bounds[info.features[i]][1] - info.bounds[info.features[i]][0] for i in others])
    held = np.array([values[info.features[i]] for i in others])
    distance = np.sqrt(np.mean(((inputs[:, others] - held) / ranges) ** 2, axis=1))
    chosen = np.flatnonzero(distance <= near)
    return chosen, distance[chosen]


def slices(
    client: SurrogateClient,
    at: Mapping[str, float] | None,
    output: str | None,
    points: int,
    latent: bool,
    near: float | None = None,
) -> Figure:
    info = client.model()
    values = held_values(info, at)
    outputs = chosen_outputs(info, output)
    training = client.training_data() if near is not None else None
    base = np.array([values[f] for f in info.features])
    grids = [np.linspace(*info.bounds[f], points) for f in info.features]
    X = np.tile(base, (points * len(info.features), 1))
    for i, grid in enumerate(grids):
        X[i * points : (i + 1) * points, i] = grid
    prediction = client.predict(X, latent=latent)
    std = np.sqrt(prediction.variance)
    figure = Figure(figsize=(3.4 * len(info.features), 2.8 * len(outputs)), layout="constrained")
    axes = figure.subplots(len(outputs), len(info.features), squeeze=False)
    for row, name in enumerate(outputs):
        j = info.outputs.index(name)
        for i, (feature, grid) in enumerate(zip(info.features, grids, strict=True)):
            ax = axes[row, i]
            part = slice(i * points, (i + 1) * points)
            mean, band = prediction.mean[part, j], 2 * std[part, j]
            ax.fill_between(grid, mean - band, mean + band, alpha=BAND_ALPHA, linewidth=0, label=r"$\pm 2\sigma$")
            ax.plot(grid, mean, label="mean")
            ax.axvline(values[feature], linestyle="--", linewidth=0.8, color="0.4")
            if training is not None and near is not None:
                chosen, distance = near_points(info, training.inputs, feature, values, near)
                shade = 1 - 0.75 * np.minimum(1, distance / near) if near > 0 else np.ones(len(chosen))
                colours = [(0.84, 0.15, 0.16, a) for a in shade]  # fainter is farther, as on the page
                x = training.inputs[chosen, i]
                if training.outputs is not None:
                    ax.scatter(x, training.outputs[chosen, j], s=14, c=colours, label="training points", zorder=3)
                else:  # inputs only: ticks along the foot (y in axes coordinates)
                    foot = ax.get_xaxis_transform()
                    ax.scatter(x, np.full(len(x), 0.03), marker="|", s=80, c=colours, transform=foot,
                               label="training inputs", zorder=3)  # fmt: skip
            ax.set_xlabel(feature)
            if i == 0:
                ax.set_ylabel(name)
    axes[0, 0].legend(loc="best", fontsize="small")
    variance = "latent" if latent else "noisy"
    figure.suptitle(
        rf"{info.name} {info.version}: mean $\pm 2\sigma$ ({variance}) along each feature; others at their dashed line"
    )
    return figure


def contour(
    client: SurrogateClient,
    a: str,
    b: str,
    at: Mapping[str, float] | None,
    output: str | None,
    points: int,
    latent: bool,
) -> Figure:
    info = client.model()
    for feature in (a, b):
        if feature not in info.features:
            raise ValueError(f"unknown feature {feature!r} (the model's: {', '.join(info.features)})")
    if a == b:
        raise ValueError("choose two different features")
    values = held_values(info, at)
    outputs = chosen_outputs(info, output)
    xs, ys = np.linspace(*info.bounds[a], points), np.linspace(*info.bounds[b], points)
    grid_x, grid_y = np.meshgrid(xs, ys)  # rows follow b, columns a
    X = np.tile(np.array([values[f] for f in info.features]), (points * points, 1))
    X[:, info.features.index(a)] = grid_x.ravel()
    X[:, info.features.index(b)] = grid_y.ravel()
    prediction = client.predict(X, latent=latent)
    figure = Figure(figsize=(11, 4.2 * len(outputs)), layout="constrained")
    axes = figure.subplots(len(outputs), 2, squeeze=False)
    for row, name in enumerate(outputs):
        j = info.outputs.index(name)
        pictures = (
            (prediction.mean[:, j], f"mean of {name}", "viridis"),
            (np.sqrt(prediction.variance[:, j]), f"standard deviation of {name}", "cividis"),
        )
        for ax, (z, title, colours) in zip(axes[row], pictures, strict=True):
            filled = ax.contourf(xs, ys, z.reshape(points, points), levels=20, cmap=colours)
            figure.colorbar(filled, ax=ax)
            ax.plot([values[a]], [values[b]], marker="x", color="white", markeredgecolor="black", markersize=8)
            ax.set(xlabel=a, ylabel=b, title=title)
    figure.suptitle(f"{info.name} {info.version}: {a} and {b}; {_describe(values, (a, b))}")
    return figure


def sensitivity(client: SurrogateClient, result: Mapping[str, Any], output: str | None) -> Figure:
    """First-order and total Sobol' indices per feature, bars with their intervals (POST /sensitivity's answer)."""
    info = client.model()
    outputs = chosen_outputs(info, output)
    per_output = {info.outputs[0]: result} if len(info.outputs) == 1 else result
    features = list(info.features)
    positions = np.arange(len(features))
    width = 0.38
    figure = Figure(figsize=(max(5.0, 1.3 * len(features) + 2), 3.4 * len(outputs)), layout="constrained")
    axes = figure.subplots(len(outputs), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, outputs, strict=True):
        answer = per_output[name]
        for key, label, offset in (("first_order", "first order", -width / 2), ("total", "total", width / 2)):
            estimate = np.array([answer[key][f]["estimate"] for f in features], dtype=float)
            low = np.array([answer[key][f]["ci_low"] for f in features], dtype=float)
            high = np.array([answer[key][f]["ci_high"] for f in features], dtype=float)
            # an interval that leaves out its estimate (a bootstrap's can) is drawn from the estimate
            errors = np.maximum(0.0, [estimate - low, high - estimate])
            ax.bar(positions + offset, estimate, width, yerr=errors, capsize=3, label=label)
        ax.set_xticks(positions, features)
        ax.set_ylabel("Sobol' index")
        ax.set_ylim(bottom=0)
        level = round(100 * float(answer.get("confidence", 0.95)))
        ax.set_title(f"{name}: n = {answer.get('n')}, seed {answer.get('seed')}, {level}% intervals")
        ax.legend(fontsize="small")
    figure.suptitle(f"{info.name} {info.version}: Sobol' indices")
    return figure
