"""Pictures of the served model with matplotlib (the `plot` extra): what the API's /explore page draws, as Figures.

`SurrogateClient.plot_slices()`, `.plot_contour(a, b)` and `.plot_sensitivity()` call these. Each builds a
`matplotlib.figure.Figure` without pyplot (no global figure list, no GUI backend): show it in a notebook, or
`fig.savefig("slices.png")`. Each picture's points go out in one `predict` call (split into requests within the
service's batch limit if needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from gpr_client.answers import ModelInfo, Predictions, TrainingData

try:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ModuleNotFoundError as missing:  # the extra is not installed
    raise ModuleNotFoundError(
        "the plots need matplotlib, which the client's `plot` extra installs: pip install './client[plot]' from the "
        "repository's root (or pip install matplotlib)",
        name=missing.name,
    ) from missing


class DrawnModel(Protocol):
    """What the pictures ask of the client (SurrogateClient is one): its model, training points and predictions."""

    def model(self) -> ModelInfo: ...

    def training_data(self) -> TrainingData | None: ...

    def predict(self, X: Any, *, latent: bool = ...) -> Predictions: ...


BAND_ALPHA = 0.25
# The band (mean +- 2 sd) is drawn and named in the legend where 2 sd exceeds this fraction of the y-axis span
# somewhere along the slice: below it the band hides under the 1.5 pt line (~1% of a panel's height).
BAND_VISIBLE_FRACTION = 0.01
BAND_LABEL = r"$\pm 2\sigma$"
BAND_NARROWER_NOTE = "band narrower than the line"
MAX_COLUMNS = 4
PANEL_INCHES = (3.2, 2.5)  # one slice's width and height
TITLE_AND_LEGEND_INCHES = 0.9
TICK_INTERVALS = 5  # at most this many intervals between ticks (six ticks) an axis, so that labels fit a panel
SCIENTIFIC_LIMITS = (-3, 4)  # |values| below 1e-3 or from 1e4 share a x10^k factor (no "100000110000")


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


def _describe(info: ModelInfo, values: Mapping[str, float], leave_out: tuple[str, ...]) -> str:
    """Where the other features are held, for a title: plain numbers (no e-notation) with their units."""
    held = [f"{f} = {_plain(v)}{_unit(info, f)}" for f, v in values.items() if f not in leave_out]
    return ", ".join(held) if held else "no other feature"


def _plain(value: float) -> str:
    """Four significant digits without e-notation where that stays short (89,350 rather than 8.935e+04)."""
    if value == 0 or 1e-4 <= abs(value) < 1e7:
        digits = max(0, 3 - int(np.floor(np.log10(abs(value))))) if value else 0
        text = f"{round(value, digits):,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.4g}"


def _unit(info: ModelInfo, name: str) -> str:
    unit = info.units.get(name)
    return f" {unit}" if unit else ""


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


def slice_grid(n_features: int, ncols: int | None) -> tuple[int, int]:
    """(columns, rows) of one output's slices: `ncols` if given, else at most four columns, rows as even as can be
    (5 features: 3 + 2; 8: 4 + 4; 10: 4 + 4 + 2)."""
    if ncols is None:
        rows = -(-n_features // MAX_COLUMNS)
        ncols = -(-n_features // rows)
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(ncols, n_features)
    return ncols, -(-n_features // ncols)


def readable_ticks(ax: Axes) -> None:
    """At most six ticks per axis, with large or small values written against a shared x10^k factor."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=TICK_INTERVALS, steps=[1, 2, 2.5, 5, 10]))
    ax.ticklabel_format(axis="both", style="sci", scilimits=SCIENTIFIC_LIMITS, useMathText=True)


def slices(
    client: DrawnModel,
    at: Mapping[str, float] | None,
    output: str | None,
    points: int,
    latent: bool,
    near: float | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
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
    columns, rows = slice_grid(len(info.features), ncols)
    if figsize is None:
        width, height = PANEL_INCHES
        figsize = (width * columns, height * rows * len(outputs) + TITLE_AND_LEGEND_INCHES)
    figure = Figure(figsize=figsize, layout="constrained")
    grid_axes = figure.subplots(rows * len(outputs), columns, squeeze=False)
    band_hidden: list[Axes] = []
    band_shown = False
    for block, name in enumerate(outputs):
        j = info.outputs.index(name)
        panels = grid_axes[block * rows : (block + 1) * rows].ravel()
        for extra in panels[len(info.features) :]:
            extra.remove()
        panels = panels[: len(info.features)]
        for ax in panels[1:]:
            ax.sharey(panels[0])  # one y scale per output: a flat slice is a feature that matters little
        widest_band = np.zeros(len(info.features))
        for i, (feature, grid, ax) in enumerate(zip(info.features, grids, panels, strict=True)):
            part = slice(i * points, (i + 1) * points)
            mean, band = prediction.mean[part, j], 2 * std[part, j]
            widest_band[i] = float(np.max(band))
            ax.fill_between(grid, mean - band, mean + band, alpha=BAND_ALPHA, linewidth=0, label=BAND_LABEL)
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
            ax.set_xlabel(info.label(feature))
            readable_ticks(ax)
            if i % columns == 0:
                ax.set_ylabel(info.label(name))
            else:  # the row's first panel carries the shared scale
                ax.tick_params(axis="y", labelleft=False)
                ax.yaxis.offsetText.set_visible(False)
        low, high = panels[0].get_ylim()  # the block's shared limits, autoscaled to everything drawn
        visible = widest_band > BAND_VISIBLE_FRACTION * (high - low)
        band_shown |= bool(visible.any())
        band_hidden += [ax for ax, shown in zip(panels, visible, strict=True) if not shown]
    for ax in band_hidden:
        ax.text(0.02, 0.97, BAND_NARROWER_NOTE, transform=ax.transAxes, ha="left", va="top", fontsize="x-small",
                color="0.35")  # fmt: skip
    entries: dict[str, Any] = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if not band_shown:
        entries.pop(BAND_LABEL, None)
    figure.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=len(entries),
                  fontsize="small", frameon=False)  # fmt: skip
    whose = "of the function" if latent else "of an observation"
    figure.suptitle(
        rf"{info.name} {info.version}: mean $\pm 2\sigma$ {whose} along each feature; others at their dashed line"
    )
    return figure


def contour(
    client: DrawnModel,
    a: str,
    b: str,
    at: Mapping[str, float] | None,
    output: str | None,
    points: int,
    latent: bool,
    figsize: tuple[float, float] | None = None,
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
    figure = Figure(figsize=figsize or (11, 4.2 * len(outputs)), layout="constrained")
    axes = figure.subplots(len(outputs), 2, squeeze=False)
    for row, name in enumerate(outputs):
        j = info.outputs.index(name)
        unit = info.units.get(name)
        pictures = (
            (prediction.mean[:, j], f"mean of {name}", "mean", "viridis"),
            (np.sqrt(prediction.variance[:, j]), f"standard deviation of {name}", "std", "cividis"),
        )
        for ax, (z, title, statistic, colours) in zip(axes[row], pictures, strict=True):
            filled = ax.contourf(xs, ys, z.reshape(points, points), levels=20, cmap=colours)
            bar = figure.colorbar(filled, ax=ax)
            bar.set_label(f"{statistic} of {name}" + (f" ({unit})" if unit else ""))
            ax.plot([values[a]], [values[b]], marker="x", color="white", markeredgecolor="black", markersize=8)
            ax.set(xlabel=info.label(a), ylabel=info.label(b), title=title)
            readable_ticks(ax)
    figure.suptitle(f"{info.name} {info.version}: {a} and {b}; {_describe(info, values, (a, b))}")
    return figure


def sensitivity(
    client: DrawnModel, result: Mapping[str, Any], output: str | None, figsize: tuple[float, float] | None = None
) -> Figure:
    """First-order and total Sobol' indices per feature, bars with their intervals (POST /sensitivity's answer)."""
    info = client.model()
    outputs = chosen_outputs(info, output)
    per_output = {info.outputs[0]: result} if len(info.outputs) == 1 else result
    features = list(info.features)
    positions = np.arange(len(features))
    width = 0.38
    figsize = figsize or (max(5.0, 1.3 * len(features) + 2), 3.4 * len(outputs))
    figure = Figure(figsize=figsize, layout="constrained")
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
        # names longer than a bar pair is wide lean, so that neighbours do not run into each other
        lean = max(map(len, features)) * len(features) > 8 * figsize[0]
        ax.set_xticks(positions, features, rotation=30 if lean else 0, ha="right" if lean else "center")
        ax.set_ylabel(f"Sobol' index of {name}")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}: {_sensitivity_settings(answer)}")
        ax.legend(fontsize="small")
    figure.suptitle(f"{info.name} {info.version}: Sobol' indices")
    return figure


def _sensitivity_settings(answer: Mapping[str, Any]) -> str:
    """What the indices were computed from: the sample size n, the posterior draws k (none: the posterior mean's
    indices, whose intervals are the sampling error only), the seed and the intervals' level."""
    level = round(100 * float(answer.get("confidence", 0.95)))
    draws = int(answer.get("posterior_samples") or 0)
    used = f"k = {draws} posterior draws" if draws else "k = 0 posterior draws (the mean's indices)"
    return f"n = {answer.get('n')}, {used}, seed {answer.get('seed')}, {level}% intervals"
