"""Training and the active-learning loop, the parts with no HTTP in them: the data a fit or an observation sends
(rows, columns, a DataFrame, arrays, or a CSV/.npy file to upload), the training request's body, and the loop's
history."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpr_client.answers import optional_module

KERNELS = ("auto", "RBF", "Matern32", "Matern52", "Exponential")
PROMOTE_RULES = ("never", "if_better", "always")
REFITS = ("condition", "full", "none")
INFERENCES = ("auto", "exact", "sparse")
ACQUISITIONS = ("variance", "integrated_variance")  # the loop learns the function: no goal-directed acquisitions
UPLOAD_FORMATS = ("csv", "npy")
# API Gateway refuses bodies over 6 MB; inline data larger than this goes as an upload instead.
MAX_INLINE_BYTES = 5_000_000
# Rows POST /models/{name}/observations takes inline (the service's MAX_OBSERVATION_ROWS): more go as an upload.
MAX_INLINE_OBSERVATIONS = 2_000
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")

ACCEPTED_DATA = (
    "rows [{name: value}], columns {name: [values]}, a DataFrame, a pair (X, Y) of arrays, an (N, features + "
    "outputs) array with features= and outputs=, or the path of a .csv or .npy file"
)


@dataclass(frozen=True)
class Upload:
    """A file to PUT to the training job's upload URL: its format ("csv" or "npy") and bytes."""

    format: str
    content: bytes


def table_of(
    data: Any, features: Sequence[str] | None = None, outputs: Sequence[str] | None = None
) -> dict[str, Any] | Upload:
    """The request's "data": {"rows": [...]} or {"columns": {...}} for data in memory, an Upload for a file (or for
    data too large for one request). Arrays need `features` and `outputs` to name their columns (a pair (X, Y): X's
    columns are the features, Y's the outputs); named data is sent by its own names."""
    if isinstance(data, str | os.PathLike):
        return _file(Path(data))
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame
        columns = {str(name): _numbers(data[name].to_numpy(), str(name)) for name in data.columns}
        return _inline({"columns": columns}, features, outputs)
    if isinstance(data, Mapping):
        lengths = {name: len(values) for name, values in data.items() if isinstance(values, Sequence | np.ndarray)}
        if len(lengths) != len(data):
            scalar = next(str(name) for name in data if name not in lengths)
            raise TypeError(f"data's columns must be lists of values; {scalar!r} is {type(data[scalar]).__name__}")
        if len(set(lengths.values())) > 1:
            said = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise ValueError(f"data's columns must be lists of one length: {said}")
        return _inline(
            {"columns": {str(name): _numbers(values, str(name)) for name, values in data.items()}}, features, outputs
        )
    if isinstance(data, tuple) and len(data) == 2:
        return _inline({"columns": _pair_columns(data[0], data[1], features, outputs)}, features, outputs)
    if isinstance(data, Sequence) and data and all(isinstance(row, Mapping) for row in data):
        names = list(data[0])
        for i, row in enumerate(data):
            if set(row) != set(names):
                raise ValueError(f"data row {i} names {sorted(row)}, row 0 {sorted(names)}: every row names the same")
        rows = [{str(k): _number(v, f"rows[{i}].{k}") for k, v in row.items()} for i, row in enumerate(data)]
        return _inline({"rows": rows}, features, outputs)
    if isinstance(data, np.ndarray | Sequence) and not isinstance(data, str | bytes):
        array = np.asarray(data, dtype=float)
        if features is None or outputs is None:
            raise ValueError("an array's columns have no names: give features= and outputs= (features first)")
        if array.ndim != 2 or array.shape[1] != len(features) + len(outputs):
            raise ValueError(
                f"data must be (N, {len(features) + len(outputs)}) for features {', '.join(features)} and outputs "
                f"{', '.join(outputs)}; got {array.shape}"
            )
        names = [*features, *outputs]
        return _inline(
            {"columns": {name: _numbers(array[:, j], name) for j, name in enumerate(names)}}, features, outputs
        )
    raise TypeError(f"data must be {ACCEPTED_DATA}; got {type(data).__name__}")


def rows_in(table: dict[str, Any]) -> int:
    """How many rows a "data" object holds."""
    if "rows" in table:
        return len(table["rows"])
    return len(next(iter(table["columns"].values()), []))


def _pair_columns(
    X: Any, Y: Any, features: Sequence[str] | None, outputs: Sequence[str] | None
) -> dict[str, list[float]]:
    if features is None or outputs is None:
        raise ValueError("a pair (X, Y) needs features= and outputs= to name its columns")
    inputs, results = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    if inputs.ndim == 1 and len(features) == 1:
        inputs = inputs[:, None]
    if results.ndim == 1:
        results = results[:, None]
    if inputs.ndim != 2 or inputs.shape[1] != len(features):
        raise ValueError(f"X must be (N, {len(features)}) for features {', '.join(features)}; got {inputs.shape}")
    if results.ndim != 2 or results.shape != (len(inputs), len(outputs)):
        raise ValueError(
            f"Y must be ({len(inputs)}, {len(outputs)}) for outputs {', '.join(outputs)} (a row per row of X); got "
            f"{results.shape}"
        )
    columns = {name: _numbers(inputs[:, j], name) for j, name in enumerate(features)}
    return columns | {name: _numbers(results[:, j], name) for j, name in enumerate(outputs)}


def _numbers(values: Any, name: str) -> list[float]:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as refused:
        raise ValueError(f"data's {name} must be numbers ({refused})") from refused
    if array.ndim != 1:
        raise ValueError(f"data's {name} must be one list of numbers; got shape {array.shape}")
    return array.tolist()  # NaN and inf are sent as the service's refusals name them: checked there, per row


def _number(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as refused:
        raise ValueError(f"data's {where} must be a number; got {value!r}") from refused


def _inline(
    table: dict[str, Any], features: Sequence[str] | None, outputs: Sequence[str] | None
) -> dict[str, Any] | Upload:
    """The table as sent, or as an .npy upload (features then outputs, in the order given) when its JSON would not
    fit in one request."""
    if len(json.dumps(table, allow_nan=True)) <= MAX_INLINE_BYTES:
        return table
    return as_upload(table, features, outputs)


def as_upload(table: dict[str, Any], features: Sequence[str] | None, outputs: Sequence[str] | None) -> Upload:
    """Rows in memory as an .npy upload: the features, then the outputs, in the order given."""
    if features is None or outputs is None:
        raise ValueError("data this large goes as an .npy upload, whose columns need features= and outputs=")
    columns = table.get("columns") or {k: [row[k] for row in table["rows"]] for k in table["rows"][0]}
    missing = [name for name in (*features, *outputs) if name not in columns]
    if missing:
        raise ValueError(f"data has no column(s) {', '.join(missing)}")
    buffer = io.BytesIO()
    array = np.column_stack([np.asarray(columns[name], dtype=float) for name in (*features, *outputs)])
    np.save(buffer, array, allow_pickle=False)
    return Upload("npy", buffer.getvalue())


def _file(path: Path) -> Upload:
    kind = path.suffix.lower().lstrip(".")
    if kind not in UPLOAD_FORMATS:
        raise ValueError(f"a data file must be .csv or .npy; got {path.name}")
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    return Upload(kind, path.read_bytes())


def training_body(
    table: dict[str, Any] | Upload | None,
    *,
    features: Sequence[str] | None,
    outputs: Sequence[str] | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """POST /models/{name}/train's body: the data (inline, or {"upload": format}), the names and the options given
    (None: the service's default). Options are checked here, before anything is sent."""
    body: dict[str, Any] = {}
    if isinstance(table, Upload):
        body["data"] = {"upload": table.format}
    elif table is not None:
        body["data"] = table
    if features is not None:
        body["features"] = [str(f) for f in features]
    if outputs is not None:
        body["outputs"] = [str(o) for o in outputs]
    checks = {"kernel": KERNELS, "promote": PROMOTE_RULES, "inference": INFERENCES}
    for key, allowed in checks.items():
        if options.get(key) is not None and options[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {options[key]!r}")
    restarts = options.get("restarts")
    if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1):
        raise ValueError(f"restarts must be a positive integer; got {restarts!r}")
    for key in ("bounds", "limits"):
        if options.get(key) is not None:
            body[key] = {str(name): _interval(pair, f"{key}.{name}") for name, pair in options[key].items()}
    if options.get("units") is not None:
        body["units"] = {str(name): str(unit) for name, unit in options["units"].items()}
    for key in ("kernel", "restarts", "inference", "promote", "alias", "description", "seed"):
        if options.get(key) is not None:
            body[key] = options[key]
    if options.get("force") is not None:
        body["force"] = bool(options["force"])
    return body


def _interval(pair: Any, where: str) -> list[float]:
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError) as refused:
        raise ValueError(f"{where} must be [low, high]; got {pair!r}") from refused
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where} must be finite with low < high; got [{low}, {high}]")
    return [low, high]


# The loop's default refit policy (refit_every="auto"). Conditioning keeps the hyperparameters; they were fitted to
# the data as it was, and go stale as it grows or as the loop reaches regions they did not describe. A full refit
# (a training job, promoted if better) is due after a round when either
# - the last refit took at most the rest of a round (suggest, simulate, observe) or REFIT_CHEAP_S, whichever is
#   longer: while a fit is that cheap, every round refits, as Emukit's loop re-optimises every round (on Branin, 16
#   seeds in-process, the geometric refits alone left the median RMSE 1.05-1.4x that of refitting every round from
#   half the budget on); with a slow simulator that is until the fit costs more than a simulation. Until a refit of
#   this loop has been measured, one
#   is taken as cheap while the data has at most REFIT_UNMEASURED_ROWS rows (a fit of 100 rows costs well under a
#   second: Borehole's 80 in 0.3 s of CPU); or
# - the data has grown by REFIT_GROWTH since the hyperparameters were last fitted (a geometric schedule: at 10 rows
#   the next fit is at 12, at 100 at 120; frequent while n is small and a fit is cheap, rare when it is dear), or
# - the runs observed since then surprised the versions that predicted them (the observations' surprise, per output,
#   pooled over those runs weighted by their count), once at least SURPRISE_MIN_RUNS were observed: mean |z| above
#   SURPRISE_MEAN_ABS_Z (a calibrated Gaussian's is 0.80: errors twice what the version claims), or MSLL above
#   SURPRISE_MSLL (no better than the data's mean and variance), or, from SURPRISE_COVERAGE_MIN_RUNS runs on (fewer
#   make one miss look like a collapse), the 95% interval covering under SURPRISE_COVERAGE_95 of them.
# A refit resets both, whether or not its version was promoted (if not, the served hyperparameters were judged the
# better fit of the same data).
REFIT_CHEAP_S = 1.0
REFIT_UNMEASURED_ROWS = 100
REFIT_GROWTH = 0.2
SURPRISE_MIN_RUNS = 3
SURPRISE_MEAN_ABS_Z = 1.6
SURPRISE_MSLL = 0.0
SURPRISE_COVERAGE_MIN_RUNS = 10
SURPRISE_COVERAGE_95 = 0.8
REFIT_AUTO = "auto"


class RefitPolicy:
    """When the loop runs a full refit: `every` "auto" (the rule above), k (after every k-th round) or None
    (never). Feed it each round's observation answer with `observed`; `due` says why a refit is due (or None), and
    `refitted` that one ran."""

    def __init__(self, every: int | str | None = REFIT_AUTO) -> None:
        check_refit_every(every)
        self.every = every
        self.rounds = 0
        self.fitted_rows: int | None = None  # rows when the hyperparameters were last fitted (None: not known yet)
        self.rows = 0
        self._pooled: dict[str, dict[str, float]] = {}  # per output: the surprise's sums since the last fit
        self.refit_seconds: float | None = None  # what the last refit took (None: none ran yet)
        self.round_seconds: float | None = None  # what the last round took before any refit

    def observed(self, answer: Mapping[str, Any], seconds: float | None = None) -> None:
        """A round's observation answer: its rows before and added, and its surprise per output; `seconds`: what
        the round took so far (suggest, simulate, observe)."""
        self.rounds += 1
        self.round_seconds = seconds
        before, added = _row_count(answer, "rows_before"), _row_count(answer, "rows_added")
        if self.fitted_rows is None:  # the served version's hyperparameters were fitted on the data before the loop
            self.fitted_rows = before
        self.rows = before + added
        for output, scores in (answer.get("surprise") or {}).items():
            if not isinstance(scores, Mapping) or not scores.get("n"):
                continue  # the "version" key, or an output with no scores
            pooled = self._pooled.setdefault(output, {"n": 0.0})
            n = float(scores["n"])
            pooled["n"] += n
            for key in ("mean_abs_z", "msll", "coverage_95"):
                value = scores.get(key)
                if value is None and key == "mean_abs_z" and key in scores:
                    value = math.inf  # answered null: not finite (a zero predictive variance), as surprising as can be
                if value is not None:
                    pooled[key] = pooled.get(key, 0.0) + n * float(value)
                    pooled[f"{key} n"] = pooled.get(f"{key} n", 0.0) + n

    def due(self) -> str | None:
        """Why a full refit is due after the round just observed, or None."""
        if self.every is None:
            return None
        if isinstance(self.every, int):
            return f"every {self.every} rounds" if self.rounds % self.every == 0 else None
        fitted = self.fitted_rows or 0
        if self.rows > fitted:
            allowed = max(REFIT_CHEAP_S, self.round_seconds or 0.0)
            if self.refit_seconds is not None and self.refit_seconds <= allowed:
                return f"the last refit took {self.refit_seconds:.2g} s, at most {allowed:.2g} s"
            if self.refit_seconds is None and self.rows <= REFIT_UNMEASURED_ROWS:
                return f"no refit measured yet, and {self.rows} rows (at most {REFIT_UNMEASURED_ROWS}) fit cheaply"
        if fitted and self.rows >= (1 + REFIT_GROWTH) * fitted:
            return f"the data grew from {fitted} to {self.rows} rows since the last fit"
        for output, pooled in self._pooled.items():
            if pooled["n"] < SURPRISE_MIN_RUNS:
                continue
            keys = ("mean_abs_z", "msll", "coverage_95")
            mean = {k: pooled[k] / pooled[f"{k} n"] for k in keys if pooled.get(f"{k} n")}
            runs = int(pooled["n"])
            if mean.get("mean_abs_z", 0.0) > SURPRISE_MEAN_ABS_Z:
                return f"{output}: mean |z| {mean['mean_abs_z']:.3g} over {runs} new runs"
            if mean.get("msll", -math.inf) > SURPRISE_MSLL:
                return f"{output}: MSLL {mean['msll']:.3g} over {runs} new runs"
            if pooled["n"] >= SURPRISE_COVERAGE_MIN_RUNS and mean.get("coverage_95", 1.0) < SURPRISE_COVERAGE_95:
                return f"{output}: 95% coverage {mean['coverage_95']:.0%} over {runs} new runs"
        return None

    def refitted(self, seconds: float | None = None) -> None:
        """A full refit ran on all the rows observed so far, taking `seconds` (None: not measured)."""
        self.fitted_rows = self.rows
        self._pooled = {}
        self.refit_seconds = seconds


def _row_count(answer: Mapping[str, Any], key: str) -> int:
    """A row count of an observation answer: a non-negative integer (0 when absent, as a stub answers), else a
    ValueError naming it (a negative or fractional count would schedule refits on nonsense: "grew from -50 to -51")."""
    value = answer.get(key)
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or value != int(value)
    ):
        raise ValueError(f"the observation answer's {key} is not a row count: {value!r}")
    return int(value)


def check_refit_every(every: Any) -> None:
    if every is None or every == REFIT_AUTO:
        return
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f'refit_every must be "auto", a positive integer or None; got {every!r}')


def check_loop_arguments(rounds: int, batch: int, acquisition: str, refit_every: int | str | None) -> None:
    """The loop's arguments, checked before its first request."""
    for name, value in (("rounds", rounds), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)}; got {acquisition!r}")
    check_refit_every(refit_every)


def simulated(values: Any, batch: int, outputs: Sequence[str]) -> np.ndarray:
    """The simulator's results for a batch as a (batch, n_outputs) array; a ValueError says what it returned."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as refused:
        raise ValueError(f"the simulator must return numbers; got {type(values).__name__} ({refused})") from refused
    if array.ndim == 1 and len(outputs) == 1:
        array = array[:, None]
    if array.shape != (batch, len(outputs)):
        raise ValueError(
            f"the simulator must return ({batch}, {len(outputs)}) values for {batch} point(s) and outputs "
            f"{', '.join(outputs)} (a 1-D array for one output); got {array.shape}"
        )
    return array


def promoted(promotion: Mapping[str, Any] | None, version: int | None) -> bool:
    """Whether a promotion record says the alias now serves `version`."""
    if not promotion or version is None:
        return False
    if promotion.get("promoted") is not None:
        return bool(promotion["promoted"])
    return bool(promotion.get("to") == version)


class Observed:
    """The loop's simulated batches and the first version that holds each (a version is fitted or conditioned on the
    whole dataset as it was when made, so it holds every batch observed before it): the points a version has not
    seen, which /suggest takes as pending."""

    def __init__(self) -> None:
        self._batches: list[tuple[np.ndarray, int | None]] = []

    def add(self, points: np.ndarray) -> None:
        self._batches.append((points, None))

    def made(self, version: int | None) -> None:
        """A version was made now: it holds every batch observed so far."""
        if version is not None:
            self._batches = [(points, version if held is None else held) for points, held in self._batches]

    def unseen_by(self, version: int | None) -> np.ndarray | None:
        """The points `version` has not seen (None: a version from before the loop, which has seen none of them);
        None where it has seen them all."""
        unseen = [p for p, held in self._batches if version is None or held is None or held > version]
        return np.vstack(unseen) if unseen else None


@dataclass
class LoopRound:
    """One round of the loop: the points suggested, what the simulator returned, the version conditioned on them
    (and whether the alias serves it), the service's surprise scores for the points, the full refit's training job
    where this round had one, and seconds per step (suggest, simulate, observe, refit, total). `served`: the
    version the alias serves after the round (a conditioned or refitted version it was moved to); warm
    environments may answer from the one before for a few seconds (alias reads are cached), so read this one
    with `SurrogateClient(url, model=name, version=round.served)`."""

    round: int
    points: np.ndarray
    outputs: np.ndarray
    version: int | None
    promoted: bool
    surprise: dict[str, Any] | None
    training_job: dict[str, Any] | None
    seconds: dict[str, float]
    pending: int = 0  # points sent to /suggest as pending (observed, but not in the version that suggested)
    served: int | None = None  # the version the alias serves after the round, as far as the loop knows


@dataclass
class LoopHistory:
    """The loop's rounds, in order; `.points`/`.outputs` every point simulated."""

    model: str
    features: tuple[str, ...]
    output_names: tuple[str, ...]
    rounds: list[LoopRound] = field(default_factory=list)

    @property
    def points(self) -> np.ndarray:
        return np.vstack([r.points for r in self.rounds]) if self.rounds else np.empty((0, len(self.features)))

    @property
    def outputs(self) -> np.ndarray:
        return np.vstack([r.outputs for r in self.rounds]) if self.rounds else np.empty((0, len(self.output_names)))

    @property
    def versions(self) -> list[int | None]:
        return [r.version for r in self.rounds]

    def rows(self) -> list[dict[str, Any]]:
        """A row per round: its number, versions (the refit's, and the one served after it), points, why it
        refitted, the surprise's mean |z| per output and the seconds."""
        found = []
        for r in self.rounds:
            row: dict[str, Any] = {"round": r.round, "points": len(r.points), "version": r.version}
            row["promoted"] = r.promoted
            row["refit_version"] = (r.training_job or {}).get("version")
            row["refit_reason"] = (r.training_job or {}).get("refit_reason")
            row["served"] = r.served
            for output in self.output_names:
                scores = (r.surprise or {}).get(output) or {}
                row[f"{output} mean |z|"] = scores.get("mean_abs_z")
            row |= {f"{step} s": seconds for step, seconds in r.seconds.items()}
            found.append(row)
        return found

    def to_frame(self) -> Any:
        """rows() as a pandas DataFrame (the client's `pandas` extra)."""
        pandas = optional_module("pandas", "pandas", "to_frame() needs pandas")
        return pandas.DataFrame(self.rows())
