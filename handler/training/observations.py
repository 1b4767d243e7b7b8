"""New simulations for a model (POST /models/{name}/observations): appended to its data, the alias's version (and
its canary) scored on them before seeing them, a conditioned version published and promoted, a worse canary rolled
back. numpy only: this runs in the admin function.

The rules (docs/training.md states them):
- Parent: the version the alias (default `live`) serves as its main target, not its canary.
- Conditioned version, "promote": "if_better": the parent's hyperparameters conditioned on a superset of its data.
  The training rule (both versions scored by leave-one-out on the new dataset, each with its own hyperparameters)
  is a tie by construction here: the same hyperparameters give the same leave-one-out predictions. Ties promote; so
  "if_better" promotes the conditioned version when the alias still serves its parent, or a version conditioned
  from the same parent on fewer rows (a post that landed first: same hyperparameters, a prefix of these rows, since
  datasets only grow). Any other version that took the alias while this request ran is left in place.
- Canary: rolled back (removed from the alias, recorded as a move) when, on the new rows, the canary's mean MSLL
  exceeds the main target's by more than CANARY_MSLL_MARGIN nats with at least CANARY_MIN_ROWS rows, or some output's
  95% coverage is below CANARY_MIN_COVERAGE while the main target's is at least MAIN_GOOD_COVERAGE.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handler.gp import posterior_file
from handler.gp.artifact import ModelUnavailableError, read_manifest
from handler.gp.broken import ModelBrokenError
from handler.gp.posterior import GPPosterior
from handler.registry.datasets import DatasetStore
from handler.registry.publishing import publish_artifact
from handler.registry.store import (
    Alias,
    RegistryConflictError,
    RegistryStore,
    RegistryUnavailableError,
    Target,
    Version,
)
from handler.training.conditioning import ConditioningError, conditioned_file
from handler.training.data import MAX_OUTPUT_MAGNITUDE
from handler.training.surprise import mean_msll, scores

logger = logging.getLogger(__name__)

MAX_OBSERVATION_ROWS = 2_000  # inline rows a request may post (a conditioning at n = 2,000 takes ~0.4 s)
REFITS = ("condition", "none", "full")
# An exact conditioning in the request: an n x n Cholesky (n^3 / 3 flops) and the file (8 n^2 bytes) written, then
# loaded by the publish check, within the admin function's 3,008 MB and 60 s. At 4,000 rows the factor is 128 MB and
# the whole post a few seconds; beyond, the model wants a sparse refit (a training job) anyway.
MAX_EXACT_CONDITIONED_ROWS = 4_000
PROMOTES = ("never", "if_better", "always")
CANARY_MSLL_MARGIN = 0.1  # nats
CANARY_MIN_ROWS = 5
CANARY_MIN_COVERAGE = 0.5
MAIN_GOOD_COVERAGE = 0.8
CANARY_RULE = (
    f"roll back when the canary's mean MSLL on the new rows exceeds the main version's by more than "
    f"{CANARY_MSLL_MARGIN} nats with at least {CANARY_MIN_ROWS} rows, or an output's 95% coverage is below "
    f"{CANARY_MIN_COVERAGE:.0%} while the main version's is at least {MAIN_GOOD_COVERAGE:.0%}"
)
IF_BETTER_RULE = (
    "a conditioned version has its parent's hyperparameters: leave-one-out on the new data scores both alike (a tie, "
    "which promotes), so it is promoted while the alias serves its parent or a version conditioned from it on fewer "
    "rows"
)


class ObservationRefusedError(ValueError):
    """A request that cannot be taken (422; an upload: 409 or 413 as handler.training.jobs says), naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Request:
    X: np.ndarray
    Y: np.ndarray
    refit: str
    promote: str
    alias: str
    reason: str | None


def choice(data: dict[str, Any], field: str, options: tuple[str, ...], default: str) -> str:
    value = data.get(field, default)
    if value not in options:
        raise ObservationRefusedError(field, f"one of {', '.join(options)}")
    return str(value)


def row_count(data: Any) -> int:
    """How many rows `data` holds ({"rows": [...]} or {"columns": {...}}), refused past MAX_OBSERVATION_ROWS: read
    from the lists' lengths, before any element is."""
    if not (isinstance(data, dict) and len(data) == 1 and next(iter(data)) in ("rows", "columns")):
        raise ObservationRefusedError(
            "data", 'expected {"rows": [{name: value, ...}, ...]} or {"columns": {name: [...]}}'
        )
    if "rows" in data:
        if not isinstance(data["rows"], list):
            raise ObservationRefusedError("data.rows", "expected a list of objects")
        n, field = len(data["rows"]), "data.rows"
    else:
        columns = data["columns"]
        if not (isinstance(columns, dict) and columns and all(isinstance(c, list) for c in columns.values())):
            raise ObservationRefusedError("data.columns", "expected an object of lists of numbers, one per name")
        lengths = {len(column) for column in columns.values()}
        if len(lengths) != 1:
            raise ObservationRefusedError("data.columns", "every column must have the same length")
        n, field = lengths.pop(), "data.columns"
    if not 1 <= n <= MAX_OBSERVATION_ROWS:
        raise ObservationRefusedError(field, f"from 1 to {MAX_OBSERVATION_ROWS} rows a request, got {n}")
    return n


def rows_of(data: Any, features: tuple[str, ...], outputs: tuple[str, ...], bounds: np.ndarray) -> Any:
    """(X, Y) of `data` ({"rows"} or {"columns"}), each value a finite number, checked by `check_rows`."""
    n = row_count(data)
    names = features + outputs
    values = np.empty((n, len(names)))
    if "rows" in data:
        for i, row in enumerate(data["rows"]):
            if not isinstance(row, dict) or set(row) != set(names):
                raise ObservationRefusedError(f"data.rows[{i}]", f"expected an object with exactly {', '.join(names)}")
            for j, name in enumerate(names):
                values[i, j] = _number(row[name], f"data.rows[{i}].{name}")
    else:
        columns = data["columns"]
        if set(columns) != set(names):
            raise ObservationRefusedError("data.columns", f"expected exactly the columns {', '.join(names)}")
        for j, name in enumerate(names):
            for i, value in enumerate(columns[name]):
                values[i, j] = _number(value, f"data.columns.{name}[{i}]")
    X, Y = values[:, : len(features)], values[:, len(features) :]
    check_rows(X, Y, features, outputs, bounds)
    return X, Y


def check_rows(
    X: np.ndarray,
    Y: np.ndarray,
    features: tuple[str, ...],
    outputs: tuple[str, ...],
    bounds: np.ndarray,
    field: str = "data",
) -> None:
    """New rows as the model's data takes them: finite, outputs a model can hold, each feature within `bounds`: the
    domain the model answers (its bounds widened by the margin, within its limits), which a full refit checks the
    data against too (handler.training.jobs), so the model's data always stays trainable. Refusals name
    `{field}.{column}` and the row."""
    if (not_finite := np.argwhere(~np.isfinite(np.hstack([X, Y])))).size:
        i, j = (int(v) for v in not_finite[0])
        raise ObservationRefusedError(f"{field}.{(*features, *outputs)[j]}", f"row {i}: expected a finite number")
    if (too_large := np.argwhere(np.abs(Y) > MAX_OUTPUT_MAGNITUDE)).size:
        i, k = (int(v) for v in too_large[0])
        raise ObservationRefusedError(
            f"{field}.{outputs[k]}",
            f"row {i}: {Y[i, k]:g} is larger than {MAX_OUTPUT_MAGNITUDE:g}: no model can hold it (its variance "
            "overflows); rescale the outputs",
        )
    outside = np.less(X, bounds[:, 0]) | np.greater(X, bounds[:, 1])
    if outside.any():
        i, j = (int(k) for k in np.argwhere(outside)[0])
        low, high = bounds[j]
        raise ObservationRefusedError(
            f"{field}.{features[j]}",
            f"row {i}: {X[i, j]:g} is outside [{low:g}, {high:g}], where the model answers (its bounds widened by "
            'the domain margin, within its physical limits): to reach further, train it again with wider "bounds"',
        )


def _number(value: Any, field: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ObservationRefusedError(field, "expected a finite number")
    return float(value)


@dataclass(frozen=True)
class Loaded:
    record: Version
    kernel: str
    inference: str
    arrays: dict[str, np.ndarray]
    posterior: GPPosterior


def load_version(store: RegistryStore, record: Version, cache_dir: Path) -> Loaded:
    """A READY version's posterior file, read and checked as the loader reads it. A failure is logged; the caller is
    told only that the version could not be read (503)."""
    manifest = record.manifest
    folder = Path(tempfile.mkdtemp(prefix="observe-", dir=_existing(cache_dir)))
    try:
        path = folder / "model.npz"
        store.download_artifact(record.name, record.version, path)
        try:
            parsed = read_manifest(_json(manifest), "stored")
            arrays = posterior_file.read(path, manifest.get("posterior"), len(parsed.features), len(parsed.outputs))
            kernel = str((manifest.get("kernel") or {}).get("name"))
            posterior = GPPosterior.from_arrays(kernel, arrays)
        except (ModelUnavailableError, ValueError) as exc:
            logger.error("version %s/%s could not be read: %s", record.name, record.version, exc)
            raise RegistryUnavailableError(f"{record.name} version {record.version} could not be read") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Loaded(record, kernel, posterior.inference, arrays, posterior)


def _json(document: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(document)


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def served_by(store: RegistryStore, name: str, alias: str) -> Alias:
    current = store.alias(name, alias)
    if current is None:
        raise RegistryConflictError(
            "alias", f"{name} has no alias {alias!r}: point it at a version first (PUT /models/{name}/aliases/{alias})"
        )
    return current


def ensure_dataset(datasets: DatasetStore, name: str, parent: Loaded, who: str) -> None:
    """A model published without data: its dataset made from the training points its file publishes, or 409."""
    if datasets.head(name) is not None:
        return
    if "training_outputs" not in parent.arrays:
        raise RegistryConflictError(
            "data",
            f"{name} has no data on the service and version {parent.record.version} does not publish its training "
            f"inputs and outputs: train it on the service (POST /models/{name}/train), or package it with "
            "--publish-training-data inputs_and_outputs and publish it again",
        )
    features, outputs = tuple(parent.record.manifest["features"]), tuple(parent.record.manifest["outputs"])
    with contextlib.suppress(RegistryConflictError):  # another request made it first: append to that
        datasets.create(
            name, parent.arrays["training_inputs"], parent.arrays["training_outputs"], features, outputs, who
        )


def judge_canary(main: dict[str, dict[str, Any]], canary: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Whether the canary predicted the new rows worse than the main version (CANARY_RULE), and why."""
    n = min(score["n"] for score in main.values())
    main_msll, canary_msll = mean_msll(main), mean_msll(canary)
    compared = main_msll is not None and canary_msll is not None and n >= CANARY_MIN_ROWS
    if compared and canary_msll > main_msll + CANARY_MSLL_MARGIN:  # type: ignore[operator]
        return True, f"mean MSLL {canary_msll:.3f} against the main version's {main_msll:.3f} on {n} rows"
    for output, score in canary.items():
        ours, theirs = score["coverage_95"], main[output]["coverage_95"]
        if ours is not None and theirs is not None and ours < CANARY_MIN_COVERAGE and theirs >= MAIN_GOOD_COVERAGE:
            return True, f"{output}: 95% coverage {ours:.0%} against the main version's {theirs:.0%}"
    return False, "predicted the new rows as well as the main version (within the rule)"


def observe(
    store: RegistryStore,
    datasets: DatasetStore,
    name: str,
    request: Request,
    who: str,
    cache_dir: Path,
) -> dict[str, Any]:
    """Append, score, condition, promote, judge the canary: the answer of POST /models/{name}/observations."""
    alias = served_by(store, name, request.alias)
    parent = load_version(store, _record(store, name, alias.target.version), cache_dir)
    canary = None
    if alias.target.canary_version is not None:
        canary = load_version(store, _record(store, name, alias.target.canary_version), cache_dir)
    try:  # predicted before the rows are appended: a version that cannot answer changes nothing
        parent_prediction = parent.posterior.predict(request.X)
        canary_prediction = None if canary is None else canary.posterior.predict(request.X)
    except ModelBrokenError as exc:
        logger.error("scoring %s: %s", name, exc)
        raise RegistryUnavailableError(f"{name}'s version could not predict the new rows") from None
    ensure_dataset(datasets, name, parent, who)
    head = datasets.head(name)
    if head is not None and request.refit == "condition":
        _conditionable(parent, head.rows + len(request.X), appended=False)
    dataset, rows_before = datasets.append(name, request.X, request.Y, who)
    X_all, Y_all = datasets.load(dataset)
    new_Y, reference = Y_all[rows_before:], Y_all[:rows_before]  # these rows land last, after any that came first
    outputs = list(parent.record.manifest["outputs"])
    parent_scores = scores(parent_prediction, new_Y, outputs, reference)
    canary_scores = None if canary_prediction is None else scores(canary_prediction, new_Y, outputs, reference)
    answer: dict[str, Any] = {
        "dataset": dataset.document(),
        "rows_before": rows_before,
        "rows_added": len(new_Y),
        "surprise": {"version": f"{name}/{parent.record.version}", **parent_scores},
        "version": None,
        "promotion": None,
        "canary": None,
        "training_job": None,
    }
    if canary is not None and canary_scores is not None:
        answer["canary"] = _judge(store, name, request.alias, alias, parent_scores, canary_scores, who)
    if request.refit != "condition":
        return answer
    _conditionable(parent, dataset.rows, appended=True)  # posts that landed meanwhile count too
    started = time.perf_counter()
    try:
        artifact, manifest = conditioned_file(
            parent.kernel, parent.inference, parent.arrays, X_all, Y_all, parent.record.manifest, parent.record.version
        )
    except ConditioningError as exc:
        raise RegistryConflictError("refit", f"{exc}: train the model again (refit full)") from None
    seconds = time.perf_counter() - started
    details = {
        "dataset": dataset.reference(),
        "origin": {
            "how": "conditioned",
            "parent_version": parent.record.version,
            "kernel": parent.kernel,
            "inference": parent.inference,
            "seconds": round(seconds, 4),
        },
        "surprise": answer["surprise"],
    }
    record = publish_artifact(store, name, artifact, manifest, who, cache_dir, details=details)
    answer["version"] = {"name": name, **record.document()}
    if record.state == "READY":
        answer["promotion"] = _promote(store, name, request, parent.record.version, record.version, dataset.rows, who)
    return answer


def _conditionable(parent: Loaded, rows: int, appended: bool) -> None:
    if parent.inference == "exact" and rows > MAX_EXACT_CONDITIONED_ROWS:
        kept = "the rows were kept; " if appended else ""
        raise RegistryConflictError(
            "refit",
            f"{rows} rows are more than an exact model is conditioned on in a request ({MAX_EXACT_CONDITIONED_ROWS}): "
            f'{kept}post with "refit": "none" and train the model on its data '
            f"(POST /models/{parent.record.name}/train)",
        )


def _record(store: RegistryStore, name: str, version: int) -> Version:
    record = store.version(name, version)
    if record is None:
        raise RegistryUnavailableError(f"{name} version {version} vanished")
    return record


def _judge(
    store: RegistryStore,
    name: str,
    alias_name: str,
    alias: Alias,
    main: dict[str, dict[str, Any]],
    canary: dict[str, dict[str, Any]],
    who: str,
) -> dict[str, Any]:
    rolled_back, why = judge_canary(main, canary)
    version = alias.target.canary_version
    if rolled_back:
        n = min(score["n"] for score in main.values())
        reason = f"canary judged by {n} new simulations: version {version} {why}"
        current = store.alias(name, alias_name)
        # only if the canary is still there: another move since this request read the alias is left as it is
        if current is not None and current.target.canary_version == version:
            store.move_alias(name, alias_name, Target(current.target.version), who, reason)
        else:
            rolled_back, why = False, f"{why}; the alias moved meanwhile, so it was left as it is"
    scores = {
        "main": {"version": f"{name}/{alias.target.version}", **main},
        "canary": {"version": f"{name}/{version}", **canary},
    }
    return {"judged": True, "rolled_back": rolled_back, "rule": CANARY_RULE, "reason": why, "scores": scores}


def _superseded(store: RegistryStore, name: str, current: Alias | None, parent: int, rows: int) -> bool:
    """Whether the alias serves the parent, or a version conditioned from it on fewer rows than `rows`."""
    if current is None:
        return False
    if current.target.version == parent:
        return True
    serving = store.version(name, current.target.version)
    details = {} if serving is None else serving.details
    origin, dataset = details.get("origin") or {}, details.get("dataset") or {}
    same_parent = origin.get("how") == "conditioned" and origin.get("parent_version") == parent
    return same_parent and int(dataset.get("rows", rows)) < rows


def _promote(
    store: RegistryStore, name: str, request: Request, parent: int, new: int, rows: int, who: str
) -> dict[str, Any]:
    promotion: dict[str, Any] = {"rule": request.promote, "alias": request.alias, "from": parent, "to": None}
    current = store.alias(name, request.alias)
    if request.promote == "never":
        return {**promotion, "promoted": False, "reason": "promote is never"}
    if request.promote == "if_better" and not _superseded(store, name, current, parent, rows):
        serving = None if current is None else current.target.version
        reason = f"the alias moved to version {serving} while this request ran: {IF_BETTER_RULE}"
        return {**promotion, "promoted": False, "reason": reason}
    canary = current.target if current is not None else Target(new)
    target = Target(new, canary.canary_version, canary.canary_weight) if canary.canary_version != new else Target(new)
    why = "promote is always" if request.promote == "always" else IF_BETTER_RULE
    reason = f"conditioned on new simulations from version {parent}: {why}"
    if request.reason:
        reason = f"{request.reason} ({reason})"
    store.move_alias(name, request.alias, target, who, reason[:500])
    return {**promotion, "to": new, "promoted": True, "reason": why}
