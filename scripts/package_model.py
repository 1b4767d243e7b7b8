"""Package a fitted GPy model for the service: a posterior file (or, failing that, the pickle) and its manifest.

    python scripts/package_model.py MODEL.pkl --features temperature,pressure,flow_rate \\
        [--outputs yield,purity] [--bounds temperature=250:400,...] [--name NAME] [--version V] \\
        [--description TEXT] [--limits pressure=0:,...] [--units temperature=K,yield=%,...] \\
        [--holdout holdout.csv] [--publish-training-data inputs|inputs_and_outputs] [--force] \
        [--output model_artifacts/pretrained-model.npz]

Reads any pickled GPy model the service supports (GPRegression, SparseGPRegression, any GPy.core.GP), checks the
feature and output counts against it, takes each feature's bounds from the training inputs unless given,
computes hold-out accuracy per output from a CSV whose header names the features and outputs. A model the numpy
posterior covers (RBF/Exponential/Matern kernels, exact or sparse, Gaussian likelihood) is written as a
posterior file (`NAME.npz`: numbers only, docs/model-format.md), checked against GPy's own predictions across the
bounds with rounding-aware tolerances, and served without GPy; any other model (or one whose check fails) is
written as its pickle (`NAME.pkl`) and served through GPy. Either way, `NAME.manifest.json` beside it, and the
other format's artifact of the same name, if any, is removed (it is replaced). A packaged pickle with its
manifest beside it is converted by packaging it again: its features, outputs, bounds, name and version are
read from that manifest (limits and units too) when not given. Anything wrong exits with status 2 and one line
saying what.

The quality gate: the model must predict better than its outputs' mean, on the hold-out set when one is given
and on its own training points left out one at a time (closed form, `leave_one_out`): R2 >= MIN_R2 for every
output, and 95% intervals covering at least MIN_COVERAGE_95 of the points. A model that fails is refused (exit
status 3, nothing written, a message naming the usual cause) unless --force, which packages it with a warning.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.api.schemas import ModelManifest
from handler.gp.artifact import PUBLISHED_TRAINING_DATA, check_names, check_units, manifest_path_for
from handler.gp.gpy_model import GPRegressionModel, wrap_gpy_model
from handler.gp.unpickling import UnsafePickleError, load_pickle

# package() and its helpers live in handler/training/packaging.py (the training worker packages with them too);
# the names tests and scripts have imported from here stay importable from here.
from handler.training.packaging import CHECK_POINTS as CHECK_POINTS
from handler.training.packaging import GPY_INITIAL_LENGTHSCALE as GPY_INITIAL_LENGTHSCALE
from handler.training.packaging import MIN_R2 as MIN_R2
from handler.training.packaging import SUFFIXES as SUFFIXES
from handler.training.packaging import LeaveOneOut as LeaveOneOut
from handler.training.packaging import PackagingError as PackagingError
from handler.training.packaging import QualityGateError as QualityGateError
from handler.training.packaging import _worst_ratio as _worst_ratio
from handler.training.packaging import accuracy as accuracy
from handler.training.packaging import check_counts as check_counts
from handler.training.packaging import complete_bounds as complete_bounds
from handler.training.packaging import counted as counted
from handler.training.packaging import fast_path_error as fast_path_error
from handler.training.packaging import holdout_metrics as holdout_metrics
from handler.training.packaging import leave_one_out as leave_one_out
from handler.training.packaging import lengthscale_causes as lengthscale_causes
from handler.training.packaging import mean_tolerance as mean_tolerance
from handler.training.packaging import package as package
from handler.training.packaging import points_across as points_across
from handler.training.packaging import quality_problems as quality_problems
from handler.training.packaging import refusal as refusal
from handler.training.packaging import rounding_tolerances as rounding_tolerances
from handler.training.packaging import variance_tolerance as variance_tolerance

DEFAULT_OUTPUT = Path("model_artifacts/pretrained-model.npz")


def read_model(path: Path) -> GPRegressionModel:
    """The service's wrapper for a pickled GPy model."""
    if not path.is_file():
        raise PackagingError(f"{path}: no such file")
    try:
        obj = load_pickle(path)  # as the function will: only what GPy models are made of
    except UnsafePickleError as exc:
        raise PackagingError(f"{path} is refused: {exc}") from exc
    except Exception as exc:  # a file that is not a pickle can raise many things
        raise PackagingError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from exc
    try:
        return wrap_gpy_model(obj)
    except TypeError as exc:
        raise PackagingError(f"{path}: {exc}") from exc


def parse_names(kind: str, text: str) -> list[str]:
    """Comma-separated names, as the service's manifest checks them."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise PackagingError(f"--{kind}: expected comma-separated names")
    try:
        return list(check_names(names))
    except ValueError as exc:
        raise PackagingError(f"--{kind}: {exc}") from None


def parse_bounds(text: str, features: list[str]) -> dict[str, tuple[float, float]]:
    """`a=0:1,b=-5:5` -> {"a": (0, 1), "b": (-5, 5)}; features not named keep their training range."""
    bounds = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, range_text = item.partition("=")
        low_text, colon, high_text = range_text.rpartition(":")
        if not colon or not name:
            raise PackagingError(f"--bounds: expected NAME=LOW:HIGH, got {item!r}")
        if name not in features:
            raise PackagingError(f"--bounds: {name!r} is not one of the features ({', '.join(features)})")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise PackagingError(f"--bounds: {item!r} has a bound that is not a number") from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high and np.isfinite(high - low)):
            raise PackagingError(f"--bounds: {name} needs finite LOW < HIGH, got {low:g}:{high:g}")
        bounds[name] = (low, high)
    return bounds


def parse_limits(text: str, features: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """`r=0:,frac=0:1` -> {"r": (0, None), "frac": (0, 1)}: physical limits, either end left open by leaving it out."""
    limits: dict[str, tuple[float | None, float | None]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, range_text = item.partition("=")
        low_text, colon, high_text = range_text.partition(":")
        if not colon or not name or not (low_text.strip() or high_text.strip()):
            raise PackagingError(f"--limits: expected NAME=LOW:HIGH, NAME=LOW: or NAME=:HIGH, got {item!r}")
        if name not in features:
            raise PackagingError(f"--limits: {name!r} is not one of the features ({', '.join(features)})")
        try:
            ends = [float(end) if end.strip() else None for end in (low_text, high_text)]
        except ValueError:
            raise PackagingError(f"--limits: {item!r} has an end that is not a number") from None
        if not all(end is None or np.isfinite(end) for end in ends):
            raise PackagingError(f"--limits: {item!r}: leave an end out to leave it open, rather than inf")
        limits[name] = (ends[0], ends[1])
    return limits


def parse_units(text: str, names: list[str]) -> dict[str, str]:
    """`r=m,frac=1,flow=m3/yr` -> {"r": "m", ...}: units of features and outputs, checked as the loader checks them."""
    units = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, unit = item.partition("=")
        if not equals or not name.strip():
            raise PackagingError(f"--units: expected NAME=UNIT, got {item!r}")
        units[name.strip()] = unit.strip()
    try:
        return check_units(units or None, tuple(names))
    except ValueError as exc:
        raise PackagingError(f"--units: {exc}") from None


def read_holdout(path: Path, features: list[str], outputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """X and Y from a CSV whose header names the features and outputs (other columns are ignored)."""
    if not path.is_file():
        raise PackagingError(f"--holdout: {path}: no such file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if missing := [name for name in (*features, *outputs) if name not in header]:
            raise PackagingError(f"--holdout: {path} has no column {', '.join(missing)} (header: {', '.join(header)})")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append([float(row[name]) for name in (*features, *outputs)])
            except (TypeError, ValueError):
                raise PackagingError(f"--holdout: {path} line {line} has a value that is not a number") from None
    if not rows:
        raise PackagingError(f"--holdout: {path} has no rows")
    data = np.array(rows)
    if not np.isfinite(data).all():
        raise PackagingError(f"--holdout: {path} holds a value that is not finite")
    return data[:, : len(features)], data[:, len(features) :]


def summary(manifest: ModelManifest, output: Path) -> str:
    if manifest.predict_through_gpy is not None:
        path = "GPy's own predict (the fast path does not match it: see the warning)"
    elif manifest.format == "npz":
        path = (
            f"the numpy/BLAS fast path from a posterior file (no GPy, no pickle), checked against GPy on "
            f"{CHECK_POINTS} points across the bounds"
        )
    else:
        path = "GPy's own predict (no fast path: see the log)"
    lines = [
        f"packaged {manifest.name} {manifest.version}: {manifest.model_type}, kernel {manifest.kernel.get('name')}, "
        f"{counted(manifest.n_train, 'training point')}",
        f"  features: {', '.join(f'{f} [{lo:g}, {hi:g}]' for f, (lo, hi) in manifest.bounds.items())}",
        f"  outputs:  {', '.join(manifest.outputs)}",
        f"  predicts through {path}",
    ]
    for where, accuracies in (("hold-out", manifest.holdout), ("leave-one-out", manifest.leave_one_out)):
        for name, metrics in (accuracies or {}).items():
            lines.append(
                f"  {where} {name}: {counted(metrics.n_points, 'point')}, RMSE {metrics.rmse:.4g}, "
                f"R2 {metrics.r2:.6f}, 95% coverage {metrics.coverage_95:.1%}"
            )
    if manifest.leave_one_out is None:
        lines.append(
            "  leave-one-out: no closed form for this model's inference or likelihood (only --holdout checks it)"
        )
    elif "inducing_points" in manifest.kernel:
        lines.append("  (leave-one-out of a sparse model: in closed form for its DTC predictive, inducing points kept)")
    if manifest.holdout is None:
        lines.append("  hold-out: none given (--holdout CSV checks the model on points it was not fitted to)")
    if manifest.limits:
        limits = ", ".join(_limit_text(k, low, high) for k, (low, high) in manifest.limits.items())
        lines.append(f"  physical limits: {limits}")
    if manifest.units:
        lines.append(f"  units: {', '.join(f'{k} {v}' for k, v in manifest.units.items())}")
    if manifest.published_training_data is not None:
        what = "inputs" if manifest.published_training_data == "inputs" else "inputs and outputs"
        lines.append(f"  publishes its training {what} at GET /model/training-data (to anyone who may call the API)")
    else:
        lines.append(
            "  training points: not published (--publish-training-data inputs or inputs_and_outputs lets GET "
            "/model/training-data serve them and the explorer page draw them)"
        )
    lines.append(f"  wrote {output} and {manifest_path_for(output).name} (sha256 {manifest.sha256[:12]}...)")
    if manifest.predict_through_gpy is not None:
        lines.append(
            f"  warning: {manifest.predict_through_gpy}, so this model predicts through GPy's own predict (correct, "
            "but slower): the manifest records why. Please report this model."
        )
    noise, signal = manifest.kernel.get("noise_variance"), manifest.kernel.get("variance")
    if isinstance(noise, float) and isinstance(signal, float) and noise > signal:
        lines.append(
            f"  warning: the fitted noise variance ({noise:.3g}) exceeds the kernel's ({signal:.3g}): the model "
            "explains most of the outputs as noise. A common cause is GPy's default lengthscale of 1 in the inputs' "
            "own units: start each lengthscale near its feature's range before optimising."
        )
    return "\n".join(lines)


def _limit_text(name: str, low: float | None, high: float | None) -> str:
    """`r >= 0` as `0 <= r`, `0 <= frac <= 1`, `x <= 5`."""
    return " <= ".join([*([f"{low:g}"] if low is not None else []), name, *([f"{high:g}"] if high is not None else [])])


def beside(model_path: Path) -> dict[str, Any]:
    """The manifest next to a packaged pickle (`NAME.manifest.json`), to convert it: {} when there is none."""
    path = manifest_path_for(model_path)
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackagingError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(document, dict):
        raise PackagingError(f"{path}: expected a JSON object")
    for key, kind in (
        ("features", list),
        ("outputs", list),
        ("bounds", dict),
        ("training", dict),
        ("holdout", dict),
        ("limits", dict),
        ("units", dict),
    ):
        if document.get(key) is not None and not isinstance(document[key], kind):
            raise PackagingError(
                f"{path}: {key} must be a{'n' if kind is list else ''} {'array' if kind is list else 'object'}"
            )
    for key in ("name", "version", "description"):
        if document.get(key) is not None and not isinstance(document[key], str):
            raise PackagingError(f"{path}: {key} must be a string")
    bounds = document.get("bounds") or {}
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in bounds.values()):
        raise PackagingError(f"{path}: each bound must be a [low, high] pair")
    return document


def published_training_data(
    given: str | None, previous: dict[str, Any]
) -> Literal["inputs", "inputs_and_outputs"] | None:
    """--publish-training-data, else the converted manifest's choice; "none" publishes nothing."""
    choice = given if given is not None else previous.get("published_training_data")
    if choice in (None, "none"):
        return None
    if choice not in PUBLISHED_TRAINING_DATA:
        expected = " or ".join(PUBLISHED_TRAINING_DATA)
        raise PackagingError(f"published_training_data: expected {expected}, got {choice!r}"[:200])
    return choice  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a pickled GPy GPRegression, SparseGPRegression or other GP")
    parser.add_argument(
        "--features", help="input names, comma-separated, in the model's column order (default: the manifest's)"
    )
    parser.add_argument("--outputs", help="output names, comma-separated (default: the manifest's, or y, y1,y2,...)")
    parser.add_argument("--bounds", default="", help="NAME=LOW:HIGH,... (default: the manifest's, or training range)")
    parser.add_argument("--name", help="model name (default: the manifest's, or the pickle's file name)")
    parser.add_argument("--version", help="model version (default: the manifest's, or 1)")
    parser.add_argument("--description", help="one line on what the model predicts (GET /model, the explorer page)")
    parser.add_argument(
        "--limits",
        default="",
        help="physical limits, never widened: NAME=LOW:HIGH, NAME=LOW: or NAME=:HIGH,... (e.g. r=0:,frac=0:1; "
        "default: the manifest's, or none). The service answers within the training bounds widened by "
        "DOMAIN_MARGIN and within these.",
    )
    parser.add_argument(
        "--units", default="", help="units of features and outputs: NAME=UNIT,... (e.g. r=m,frac=1,flow=m3/yr)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"package a model that fails the quality gate (R2 < {MIN_R2} on the hold-out set or leave-one-out)",
    )
    parser.add_argument("--holdout", type=Path, help="CSV of held-out points: a column per feature and output")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"where to write (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--gpy-route",
        action="store_true",
        help="package the pickle, served through GPy, even where a posterior "
        "file would do (a package with GPy and scipy: ~3x larger, ~4x slower cold starts)",
    )
    parser.add_argument(
        "--publish-training-data",
        choices=["none", *PUBLISHED_TRAINING_DATA],
        help="what GET /model/training-data (and the explorer page) may show of the training points: their inputs, "
        "or inputs and outputs (default: the manifest's, or none: the route answers 404)",
    )
    args = parser.parse_args(argv)
    try:
        model = read_model(args.model)
        previous = beside(args.model)  # a packaged model being converted: its manifest's names and bounds
        if args.features:
            features = parse_names("features", args.features)
        elif previous.get("features"):
            features = parse_names("features", ",".join(map(str, previous["features"])))
        else:
            raise PackagingError("--features is required (no manifest beside the model to take them from)")
        if args.outputs:
            outputs = parse_names("outputs", args.outputs)
        elif previous.get("outputs"):
            outputs = parse_names("outputs", ",".join(map(str, previous["outputs"])))
        else:
            outputs = None
        bounds = parse_bounds(args.bounds, features)
        if not args.bounds and isinstance(previous.get("bounds"), dict):
            given = ",".join(f"{k}={lo!r}:{hi!r}" for k, (lo, hi) in previous["bounds"].items() if k in features)
            bounds = parse_bounds(given, features)
        outputs = check_counts(model, features, outputs)
        if args.limits:
            limits = parse_limits(args.limits, features)
        else:  # a converted manifest's, as written (null: an open end)
            limits = {k: (lo, hi) for k, (lo, hi) in (previous.get("limits") or {}).items()}
        units = parse_units(args.units, [*features, *outputs]) if args.units else dict(previous.get("units") or {})
        holdout = read_holdout(args.holdout, features, outputs) if args.holdout is not None else None
        name = args.name or previous.get("name") or args.model.stem.replace(".", "-")
        training = {**(previous.get("training") or {}), "packaged_from": args.model.name}
        manifest, artifact = package(
            model,
            args.model.read_bytes(),
            args.output,
            features=features,
            outputs=outputs,
            bounds=bounds,
            name=name,
            version_label=args.version or previous.get("version") or "1",
            description=args.description if args.description is not None else previous.get("description", ""),
            holdout=holdout,
            previous_holdout=None if holdout is not None else previous.get("holdout"),
            training=training,
            gpy_route=args.gpy_route,
            source=args.model,
            publish_training_data=published_training_data(args.publish_training_data, previous),
            limits=limits,
            units=units,
            force=args.force,
        )
    except QualityGateError as exc:
        print(f"package_model: refused: {exc}", file=sys.stderr)
        return 3
    except PackagingError as exc:
        print(f"package_model: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # the manifest would not be valid: say the first reason, in one line
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or "manifest"
        print(f"package_model: error: {where}: {first.get('msg')}", file=sys.stderr)
        return 2
    except OSError as exc:  # an --output that cannot be written
        print(f"package_model: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(summary(manifest, artifact))
    if problems := quality_problems({"hold-out": manifest.holdout, "leave-one-out": manifest.leave_one_out}):
        causes = lengthscale_causes(model, features, dict(manifest.bounds))
        warning = [f"package_model: WARNING: packaged with --force although it fails the quality gate ({artifact}):"]
        warning += [f"  {problem}" for problem in problems] + [f"  Here {cause}." for cause in causes]
        warning.append("  Its predictions are little better than its outputs' mean: do not rely on them.")
        print("\n".join(warning), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
