"""The active-learning loop, measured against the reference library and a space-filling design.

On Branin, Hartmann-6 and Borehole (benchmarks/simulators.py, physical units): from the same initial Latin
hypercube and with the same budget of simulator calls, each arm learns the function; after each round, the RMSE of
its posterior mean on a hold-out Latin hypercube, and the round's wall time. Medians over seeds.

- ours (HTTP): the service, over HTTP against a local server (scripts/local_lambda.py serve, started here, its
  registry and training queue on moto): `client.train` on the initial design, then `client.loop`: each round POST
  /suggest (variance or integrated variance), the simulator called here, POST /observations (a version conditioned
  on all the data, promoted), and a full refit (a training job, promoted if better) when the client's default
  refit rule (refit_every="auto", gpr_client.training.RefitPolicy) calls for one: every round while the last refit
  cost at most the round or 1 s (on these functions' budgets, nearly every round), the data grown by a fifth since
  the last fit, or the new runs surprised the served versions. One small training job warms the training
  function before the first arm. A
  round's time is the loop's own (suggest + simulate + observe + refit), the hold-out predictions not counted.
- Emukit: `ExperimentalDesignLoop` (an OuterLoop) with ModelVariance or IntegratedVarianceReduction (1,024 Monte
  Carlo points, as many as /suggest's integrated-variance reference points) on a GPy GPRegression: Matern-5/2 ARD
  started at the input ranges, normalizer, noise bounded to [1e-8, 1e-2] of the normalised variance (as a careful
  user sets it; GPy's defaults fail on Borehole's units), hyperparameters re-optimised every round (Emukit's
  default update_interval=1, 1 restart). A round's time: the acquisition's optimisation, the simulator, the update.
- space-filling: a Latin hypercube of each budget's size, fitted once with our fit (handler.training.fit, its
  defaults): what the same number of simulator calls buys without a loop. Its time is that one fit.

Each process on one BLAS thread (the server's too), as on a 1769 MB Lambda; wall time on a shared machine is noisy.

    python benchmarks/loop.py                      # 3 functions x 6 seeds x 5 arms: ~40 minutes on 2 cores
    python benchmarks/loop.py --quick              # Branin, 4 rounds, 1 seed (CI: that the table is made)
    python benchmarks/loop.py --arms emukit,space-filling --only Branin
    python benchmarks/loop.py --arms in-process,emukit    # (a') our steps in-process: a check, not the HTTP arm
    python benchmarks/loop.py --output benchmarks/results.md   # also (re)write its section there
"""

from __future__ import annotations

import os

# Before numpy is imported anywhere (and inherited by the server): one BLAS thread.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import date  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "client" / "src"))

from benchmarks.report import publish, table  # noqa: E402
from benchmarks.simulators import SIMULATORS, Simulator  # noqa: E402

SECTION = "The active-learning loop: ours over HTTP against Emukit and a space-filling design (benchmarks/loop.py)"
ADMIN_KEY = "bench-loop-admin"
REFIT_EVERY: int | str = "auto"  # the client's default rule (gpr_client.training.RefitPolicy)
IN_PROCESS_KERNEL = "auto"  # the in-process arm's fit (--kernel, to compare kernels; the HTTP arm fits as served)
MONTE_CARLO_POINTS = 1_024
SEEDS = tuple(range(6))  # six: the fewest whose sign test can say p < 0.05 (2 / 2^6 = 0.03)
HOLDOUT = 2_000


@dataclass(frozen=True)
class Setup:
    initial: int
    rounds: int
    batch: int

    @property
    def budget(self) -> int:
        return self.initial + self.rounds * self.batch


SETUPS = {
    "Branin": Setup(initial=10, rounds=20, batch=1),
    "Hartmann-6": Setup(initial=30, rounds=20, batch=2),
    "Borehole": Setup(initial=40, rounds=20, batch=2),
}
QUICK_SETUP = Setup(initial=8, rounds=4, batch=1)
ARMS = {
    "in-process-variance": "ours in-process (no HTTP; a check), variance",
    "in-process-integrated": "ours in-process (no HTTP; a check), integrated variance",
    "ours-variance": "ours (HTTP), variance",
    "ours-integrated": "ours (HTTP), integrated variance",
    "emukit-variance": "Emukit OuterLoop, ModelVariance",
    "emukit-integrated": "Emukit OuterLoop, IntegratedVarianceReduction",
    "space-filling": "space-filling (LHS), our fit once",
}
ARM_GROUPS = {
    "ours": ("ours-variance", "ours-integrated"),
    "in-process": ("in-process-variance", "in-process-integrated"),
    "emukit": ("emukit-variance", "emukit-integrated"),
}


@dataclass
class Run:
    """One arm on one function and seed: the hold-out RMSE after each round (index 0: the initial design), each
    round's seconds, and the initial fit's."""

    rmse: dict[int, float] = field(default_factory=dict)  # {simulator calls: RMSE}
    round_seconds: list[float] = field(default_factory=list)
    initial_seconds: float = float("nan")
    refits: int = 0  # full refits during the rounds (Emukit: one a round)
    steps: dict[str, list[float]] = field(default_factory=dict)  # ours (HTTP): seconds per step of each round
    seed: int | None = None  # set by measure(): arms are paired by seed (an arm may have failed on some)


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.ravel(predicted) - truth) ** 2)))


def checkpoints(setup: Setup) -> list[int]:
    """Simulator calls at which the table reports: the start, a quarter, half, three quarters and all the budget."""
    rounds = sorted({round(setup.rounds * k / 4) for k in range(5)})
    return [setup.initial + r * setup.batch for r in rounds]


# --- (b) Emukit --------------------------------------------------------------------------------------------------


def emukit_run(simulator: Simulator, setup: Setup, seed: int, acquisition: str, holdout: tuple) -> Run:
    import GPy
    from emukit.core import ContinuousParameter, ParameterSpace
    from emukit.core.loop import FixedIntervalUpdater
    from emukit.experimental_design import ExperimentalDesignLoop
    from emukit.experimental_design.acquisitions import IntegratedVarianceReduction, ModelVariance
    from emukit.model_wrappers import GPyModelWrapper

    X_holdout, y_holdout = holdout
    np.random.seed(seed)  # GPy's restarts and Emukit's random anchors draw from numpy's global generator
    space = ParameterSpace([ContinuousParameter(name, low, high) for name, (low, high) in simulator.bounds.items()])
    X = simulator.design(setup.initial, seed=seed)
    low, high = simulator.bounds_array.T
    kernel = GPy.kern.Matern52(len(low), lengthscale=high - low, ARD=True)
    gp = GPy.models.GPRegression(X, simulator.function(X)[:, None], kernel, normalizer=True)
    gp.likelihood.variance = 1e-4
    gp.likelihood.variance.constrain_bounded(1e-8, 1e-2, warning=False)
    model = GPyModelWrapper(gp, n_restarts=1)
    if acquisition == "integrated":
        chosen = IntegratedVarianceReduction(model, space, num_monte_carlo_points=MONTE_CARLO_POINTS)
    else:
        chosen = ModelVariance(model)
    loop = ExperimentalDesignLoop(space, model, chosen, batch_size=setup.batch)
    run = Run()
    clock = {"last": time.perf_counter(), "first": True}

    class MeasuredUpdater(FixedIntervalUpdater):  # type: ignore[misc]
        """Emukit updates the model at the start of each round and once after the last: after each update, the
        hold-out RMSE of the model as it stands (not counted in the round's time)."""

        def update(self, loop_state: object) -> None:
            super().update(loop_state)
            now = time.perf_counter()
            if clock["first"]:
                run.initial_seconds, clock["first"] = now - clock["last"], False
            else:
                run.round_seconds.append(now - clock["last"])
                run.refits += 1
            run.rmse[len(model.X)] = rmse(model.predict(X_holdout)[0], y_holdout)
            clock["last"] = time.perf_counter()

    loop.model_updaters = [MeasuredUpdater(model, 1)]
    with quiet():
        clock["last"] = time.perf_counter()
        loop.run_loop(lambda points: simulator.function(points)[:, None], setup.rounds)
    return run


# --- (c) a space-filling design fitted once ----------------------------------------------------------------------


def space_filling_run(simulator: Simulator, setup: Setup, seed: int, holdout: tuple) -> Run:
    from handler.training.fit import fit

    X_holdout, y_holdout = holdout
    run = Run()
    for n in checkpoints(setup):
        X = simulator.design(n, seed=seed)  # at the start, the loops' own initial design
        started = time.perf_counter()
        with quiet():
            result = fit(X, simulator.function(X)[:, None], simulator.bounds_array, seed=seed)
        seconds = time.perf_counter() - started
        run.rmse[n] = rmse(result.model.predict(X_holdout)[0], y_holdout)
        if n == setup.initial:
            run.initial_seconds = seconds
        else:
            run.round_seconds.append(seconds)
    return run


# --- (a') ours in-process: the same steps with no service in between (a proxy for checking, not the reported arm) --


def ours_in_process_run(simulator: Simulator, setup: Setup, seed: int, acquisition: str, holdout: tuple) -> Run:
    """Our fit on the initial design; each round /suggest's own search (handler.analyses.acquisition) on the
    posterior, the simulator, and conditioning (the same hyperparameters on all the data, as refit "condition");
    our fit again when the loop's refit rule says so (the surprise scored as the service scores it). What the
    service does, without HTTP, storage or the training queue."""
    from gpr_client.training import RefitPolicy

    from handler.analyses.acquisition import SuggestionProblem, suggest
    from handler.gp.from_gpy import posterior_from_gpy
    from handler.training.fit import fit
    from handler.training.surprise import surprise

    X_holdout, y_holdout = holdout
    low, high = simulator.bounds_array.T
    policy = RefitPolicy(REFIT_EVERY)
    rng = np.random.default_rng(seed)
    problem = SuggestionProblem(
        "integrated_variance" if acquisition == "integrated" else "variance", 0, "maximize", low, high, None, 2.0
    )
    X = simulator.design(setup.initial, seed=seed)
    Y = simulator.function(X)[:, None]
    run = Run()
    started = time.perf_counter()
    with quiet():
        gp = fit(X, Y, simulator.bounds_array, seed=seed, kernel=IN_PROCESS_KERNEL).model.gp
    run.initial_seconds = time.perf_counter() - started
    run.rmse[len(X)] = rmse(gp.predict_noiseless(X_holdout)[0], y_holdout)
    for _ in range(setup.rounds):
        started = time.perf_counter()
        picks = suggest(posterior_from_gpy(gp), problem, setup.batch, np.empty((0, len(low))), rng)
        points = np.array([pick.point for pick in picks])
        values = simulator.function(points)[:, None]
        scores = surprise(posterior_from_gpy(gp), points, values, ["y"], Y)
        observed = {"rows_before": len(X), "rows_added": len(points), "surprise": scores}
        policy.observed(observed, seconds=time.perf_counter() - started)
        X, Y = np.vstack([X, points]), np.vstack([Y, values])
        with quiet():
            if policy.due() is not None:
                refit_started = time.perf_counter()
                gp = fit(X, Y, simulator.bounds_array, seed=seed, kernel=IN_PROCESS_KERNEL).model.gp
                policy.refitted(seconds=time.perf_counter() - refit_started)
                run.refits += 1
            else:
                gp.set_XY(X, Y)  # conditioning: the hyperparameters kept
        run.round_seconds.append(time.perf_counter() - started)
        run.rmse[len(X)] = rmse(gp.predict_noiseless(X_holdout)[0], y_holdout)
    return run


# --- (a) ours over HTTP ------------------------------------------------------------------------------------------


class RoutesMissingError(Exception):
    """The server has no training routes: arm (a) cannot run."""


@contextlib.contextmanager
def local_server(folder: Path) -> Iterator[str]:
    """`scripts/local_lambda.py serve --admin-api-key`, its registry and queues on moto: yields its base URL."""
    import httpx

    from scripts.local_lambda import spawn_serve

    log = folder / "server.log"
    process, base_url = spawn_serve(log, "--admin-api-key", ADMIN_KEY, "-w", "1")
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=30).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the local server did not start:\n{log.read_text()[-3000:]}")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            process.wait(timeout=30)


def warm_up(base_url: str) -> None:
    """One small training job before the arms: the training function's cold start (~2 s locally, its imports) is
    paid here, not by whichever arm comes first (its initial fit and its first refit, which the refit rule would then
    judge dear)."""
    from gpr_client import SurrogateClient

    simulator = SIMULATORS["Branin"]
    X = simulator.design(10, seed=0)
    with SurrogateClient(base_url, admin_key=ADMIN_KEY, timeout_s=300) as admin:
        admin.train(
            f"bench-warm-up-{os.getpid()}", (X, simulator.function(X)), features=list(simulator.bounds),
            outputs=["y"], bounds=simulator.bounds, promote="never", progress=False, force=True, timeout_s=600,
        )  # fmt: skip


def ours_run(base_url: str, simulator: Simulator, setup: Setup, seed: int, acquisition: str, holdout: tuple) -> Run:
    from gpr_client import ApiError, LoopRound, SurrogateClient

    X_holdout, y_holdout = holdout
    name = f"bench-{simulator.name.lower().replace('-', '')}-{acquisition}-{seed}-{os.getpid()}"
    features = list(simulator.bounds)
    X = simulator.design(setup.initial, seed=seed)
    run = Run()
    with SurrogateClient(base_url, admin_key=ADMIN_KEY, timeout_s=300) as admin:
        started = time.perf_counter()
        try:
            first = admin.train(
                name, (X, simulator.function(X)), features=features, outputs=["y"], bounds=simulator.bounds,
                promote="always", seed=seed, progress=False, poll_interval_s=0.2, timeout_s=1800,
                force=True,  # a small initial design may fail the quality gate; the arms start from the same fit
            )  # fmt: skip
        except ApiError as refused:
            # API Gateway (and the local server) answer a route that is not there 404, 405 or 403 (no token)
            if refused.status in (404, 405) or refused.error == "Missing Authentication Token":
                said = refused.error.split(" (path:")[0]
                raise RoutesMissingError(f"POST /models/{{name}}/train answered {refused.status}: {said}") from refused
            raise
        run.initial_seconds = time.perf_counter() - started

        def holdout_rmse(version: int) -> float:
            # the version itself, not the alias: warm environments read an alias again only every few seconds
            with SurrogateClient(base_url, model=name, version=version, api_key=ADMIN_KEY, timeout_s=300) as reader:
                return rmse(reader.predict(X_holdout, latent=True).mean, y_holdout)

        run.rmse[setup.initial] = holdout_rmse(first["version"])
        serving = {"version": first["version"]}

        def measured(entry: LoopRound) -> None:
            run.round_seconds.append(entry.seconds["total"])
            run.refits += entry.training_job is not None
            for step in ("suggest", "observe", "refit"):
                if step != "refit" or entry.training_job is not None:  # a refit's seconds: the rounds with one
                    run.steps.setdefault(step, []).append(entry.seconds[step])
            serving["version"] = entry.served or serving["version"]
            run.rmse[setup.initial + (entry.round + 1) * setup.batch] = holdout_rmse(serving["version"])

        admin.loop(
            name, simulator.function, rounds=setup.rounds, batch=setup.batch,
            acquisition="integrated_variance" if acquisition == "integrated" else "variance",
            refit_every=REFIT_EVERY, progress=measured, seed=seed,
        )  # fmt: skip
    return run


# --- the measurements and the table ------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """GPy's and paramz's warnings and prints (overflowing lengthscales the optimiser tries) kept out of the log."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def measure(
    names: list[str], arms: list[str], seeds: tuple[int, ...], setups: dict[str, Setup], holdout_n: int
) -> tuple[dict[tuple[str, str], list[Run]], dict[str, str]]:
    """{(function, arm): [Run per seed]}, and {arm: why it did not run} for arms that could not."""
    found: dict[tuple[str, str], list[Run]] = {}
    missing: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        base_url = None
        if any(arm.startswith("ours") for arm in arms):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-loop-")))
            base_url = stack.enter_context(local_server(folder))
            warm_up(base_url)
        for name in names:
            simulator, setup = SIMULATORS[name], setups[name]
            for seed in seeds:
                X_holdout = simulator.design(holdout_n, seed=1000 + seed)
                holdout = (X_holdout, simulator.function(X_holdout))
                for arm in arms:
                    if arm in missing:
                        continue
                    started = time.perf_counter()
                    try:
                        run = run_arm(arm, simulator, setup, seed, holdout, base_url)
                    except RoutesMissingError as why:
                        missing[arm] = str(why)
                        print(f"{arm}: not run ({why})", file=sys.stderr)
                        continue
                    except Exception as why:  # one arm's failure is reported, not the end of the whole run
                        failed = f"{name} seed {seed}: {type(why).__name__}: {why}"[:300]
                        missing[f"{arm} failed"] = "; ".join(filter(None, [missing.get(f"{arm} failed"), failed]))
                        print(f"{arm} failed: {failed}", file=sys.stderr)
                        continue
                    run.seed = seed
                    found.setdefault((name, arm), []).append(run)
                    final = run.rmse[max(run.rmse)]
                    print(f"{name} seed {seed} {arm}: RMSE {final:.4g} at {max(run.rmse)} calls "
                          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)  # fmt: skip
    return found, missing


def run_arm(arm: str, simulator: Simulator, setup: Setup, seed: int, holdout: tuple, base_url: str | None) -> Run:
    if arm == "space-filling":
        return space_filling_run(simulator, setup, seed, holdout)
    kind, _, acquisition = arm.rpartition("-")
    if kind == "in-process":
        return ours_in_process_run(simulator, setup, seed, acquisition, holdout)
    if kind == "emukit":
        return emukit_run(simulator, setup, seed, acquisition, holdout)
    assert base_url is not None
    return ours_run(base_url, simulator, setup, seed, acquisition, holdout)


def report(
    found: dict[tuple[str, str], list[Run]],
    missing: dict[str, str],
    names: list[str],
    arms: list[str],
    seeds: tuple[int, ...],
    setups: dict[str, Setup],
    holdout_n: int,
    command: str | None = None,
) -> str:
    header = ["function (d; y's std on the hold-out set): calls", "arm", "RMSE at start", "1/4", "1/2", "3/4",
              "all calls", "s / round (median)", "s / round (max)", "full refits",
              "median s: suggest / observe / a refit",
              "initial fit s"]  # fmt: skip
    rows = []
    for name in names:
        setup = setups[name]
        at = checkpoints(setup)
        d = len(SIMULATORS[name].bounds)
        spread = float(np.std(SIMULATORS[name].function(SIMULATORS[name].design(holdout_n, seed=1000 + seeds[0]))))
        for arm in arms:
            label = (
                f"{name} ({d}; y std {spread:.3g}): {setup.initial} + {setup.rounds} x {setup.batch} = {setup.budget}"
            )
            runs = found.get((name, arm))
            if not runs:
                rows.append([label, ARMS[arm], *["not run"] * (len(header) - 2)])
                continue
            scores = [_median([r.rmse[n] for r in runs if n in r.rmse]) for n in at]
            seconds = [s for r in runs for s in r.round_seconds]
            if arm == "space-filling":
                timing = ["fit once", "fit once", "-", "-", f"{statistics.median(seconds):.2f} at {at[-1]}"]
            else:
                initial = statistics.median(r.initial_seconds for r in runs)
                refits = statistics.median(r.refits for r in runs)
                steps = [[s for r in runs for s in r.steps.get(step, [])] for step in ("suggest", "observe", "refit")]
                split = " / ".join(f"{statistics.median(v):.2f}" if v else "-" for v in steps) if steps[0] else "-"
                timing = [
                    f"{statistics.median(seconds):.2f}",
                    f"{max(seconds):.2f}",
                    f"{refits:g}",
                    split,
                    f"{initial:.2f}",
                ]
            rows.append([label, ARMS[arm], *(f"{s:.4g}" for s in scores), *timing])
    notes = ""
    for key, why in missing.items():
        if key.endswith(" failed"):  # some seeds of the arm failed: its medians are over those that ran
            notes += (
                f"\n\n{ARMS[key.removesuffix(' failed')]}: failed on {why}; its medians are over the seeds that ran"
            )
        else:
            notes += f"\n\n{ARMS[key]}: not run: {why}"
    paired = paired_table(found, names, arms, setups)
    versions = ", ".join(f"{p} {version(p)}" for p in ("numpy", "GPy", "emukit"))
    if command is None:  # the options that shaped the table (--quick, --only, --arms...), not only --seeds
        command = "" if seeds == SEEDS else f" --seeds {len(seeds)}"
    return (
        f"`python benchmarks/loop.py{command}` on {date.today().isoformat()}, on a {os.cpu_count()}-core "
        f"{platform.machine()} "
        f"machine, one BLAS thread a process (Python {platform.python_version()}; {versions}). Each function in its "
        f"physical units, the same initial Latin hypercube for every arm, then rounds of the batch size to the same "
        f"budget of simulator calls; RMSE of the posterior mean on {holdout_n:,} hold-out points (another Latin "
        f"hypercube) at the start, after a quarter, half, three quarters and all of the rounds; medians over seeds "
        f"{list(seeds)}. Seconds per round are wall time (ours: suggest + simulate + observe over HTTP, plus, in the "
        f'rounds the default refit rule (refit_every="auto") calls for one, a full refit: a training job through '
        f"the local server's queue poller, waited for; the max is such a round); Emukit: the acquisition's "
        f"optimisation + simulate + "
        f"re-optimising the hyperparameters); space-filling: one fit of the whole design with our fit. Ours' steps: "
        f"the median seconds of /suggest, of /observations (scoring, conditioning, publishing and promoting a "
        f"version) and of a full refit (over the rounds that had one: the training job queued, fitted, validated, "
        f"published and waited for).\n\n" + table(header, rows) + notes + paired
    )


# Each of our arms against Emukit's arm of the same criterion
LIKE_FOR_LIKE = {
    "ours-variance": "emukit-variance",
    "ours-integrated": "emukit-integrated",
    "in-process-variance": "emukit-variance",
    "in-process-integrated": "emukit-integrated",
}


def paired(ours: list[Run], theirs: list[Run], calls: int) -> tuple[float, int, int, float]:
    """Seed by seed at `calls`: the median of ours' RMSE over Emukit's, the seeds where ours was at most Emukit's,
    the seeds compared, and the two-sided sign test's p-value (ties, equal RMSEs, dropped as the test drops them)."""
    from scipy.stats import binomtest

    by_seed = {run.seed: run for run in theirs}
    pairs = [
        (a.rmse[calls], by_seed[a.seed].rmse[calls])
        for a in ours
        if a.seed in by_seed and calls in a.rmse and calls in by_seed[a.seed].rmse
    ]
    if not pairs:
        return float("nan"), 0, 0, float("nan")
    ratios = [a / b for a, b in pairs]
    better, worse = sum(a < b for a, b in pairs), sum(a > b for a, b in pairs)
    p = float(binomtest(better, better + worse).pvalue) if better + worse else 1.0
    return statistics.median(ratios), sum(a <= b for a, b in pairs), len(pairs), p


def paired_table(
    found: dict[tuple[str, str], list[Run]], names: list[str], arms: list[str], setups: dict[str, Setup]
) -> str:
    """Ours against Emukit seed by seed (the same initial design and hold-out set per seed): at each budget, the
    median ratio of RMSEs and how many seeds ours matched or beat."""
    rows = []
    for name in names:
        at = checkpoints(setups[name])
        for arm in arms:
            reference = LIKE_FOR_LIKE.get(arm)
            ours, theirs = found.get((name, arm)), found.get((name, reference or ""))
            if not ours or not theirs:
                continue
            cells = []
            for calls in at:
                ratio, wins, n, p = paired(ours, theirs, calls)
                cells.append(f"{ratio:.2f} ({wins}/{n}, p {p:.2f})")
            rows.append([name, f"{ARMS[arm]} / {ARMS[reference]}", *cells])
    if not rows:
        return ""
    header = ["function", "ours / Emukit", "RMSE ratio at start (seeds ours <= Emukit, sign test p)", "1/4", "1/2",
              "3/4", "all calls"]  # fmt: skip
    return (
        "\n\nSeed by seed, like against like: the median over seeds of ours' hold-out RMSE divided by Emukit's "
        "(below 1: ours more accurate), the seeds where ours was at least as accurate, and the two-sided sign "
        "test's p-value (under 0.05: unlikely to be chance; with n seeds it is at least 2 / 2^n, so below 0.05 "
        "only from 6 seeds on: with fewer, the table shows direction, not significance).\n\n" + table(header, rows)
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Branin only, 8 + 4 x 1 calls, one seed, 500 hold-out")
    parser.add_argument("--only", help="comma-separated function names (default: Branin, Hartmann-6, Borehole)")
    parser.add_argument(
        "--arms", default="ours,emukit,space-filling",
        help=f"comma-separated arms or groups: {', '.join([*ARM_GROUPS, *ARMS])} (default: all)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, help=f"how many seeds (default {len(SEEDS)}; --quick: 1)")
    parser.add_argument("--output", type=Path, help="also write the section into this markdown file")
    parser.add_argument("--kernel", default="auto", help="the in-process arm's kernel (default auto, as served)")
    parser.add_argument("--refit-every", default="auto", help="the refit rule of the ours arms: auto or k rounds")
    args = parser.parse_args(argv)
    global IN_PROCESS_KERNEL, REFIT_EVERY
    IN_PROCESS_KERNEL = args.kernel
    REFIT_EVERY = args.refit_every if args.refit_every == "auto" else int(args.refit_every)
    arms = [arm for asked in args.arms.split(",") for arm in ARM_GROUPS.get(asked.strip(), (asked.strip(),))]
    if unknown := [arm for arm in arms if arm not in ARMS]:
        parser.error(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join([*ARM_GROUPS, *ARMS])}")
    names = args.only.split(",") if args.only else (["Branin"] if args.quick else list(SETUPS))
    if unknown := [name for name in names if name not in SETUPS]:
        parser.error(f"unknown function(s) {', '.join(unknown)}: choose from {', '.join(SETUPS)}")
    setups = dict.fromkeys(names, QUICK_SETUP) if args.quick else SETUPS
    seeds = tuple(range(args.seeds)) if args.seeds else (SEEDS[:1] if args.quick else SEEDS)
    holdout_n = 500 if args.quick else HOLDOUT
    found, missing = measure(names, arms, seeds, setups, holdout_n)
    options = list(argv if argv is not None else sys.argv[1:])
    if "--output" in options:  # where the table goes does not shape it
        at = options.index("--output")
        del options[at : at + 2]
    options = [a for a in options if not a.startswith("--output=")]
    command = "".join(f" {a}" for a in options)
    publish(report(found, missing, names, arms, seeds, setups, holdout_n, command), args.output, SECTION)


if __name__ == "__main__":
    main()
