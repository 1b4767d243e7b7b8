"""Active learning on the service: it trains and refits the surrogate; the simulator stays here.

The Branin function (two inputs, x1 in [-5, 10], x2 in [0, 15]) stands in for an expensive simulator. The example
simulates an initial Latin-hypercube design and trains a model of it on the service (`client.train`: a training
job, its progress shown), asks it for Sobol' indices (`sensitivity`, intervals widened by posterior draws) beside
the function's own, then runs the loop (`client.loop`): each round the service suggests q runs (POST /suggest,
integrated variance by default), this script simulates them, and the service absorbs them (POST /observations: how
surprised the served version was by them, and a version conditioned on all the data, in the request), with a full
refit (a training job, promoted if better) when the client's default rule calls for one: the data grown by a fifth
since the last fit, or the new runs surprised the served versions (--refit-every k: every k rounds). Beside it, our
fit on as many uniformly random runs (the mean over --repeats random designs). Each round prints both RMSEs on
2,000 random test points and the surprise; at the end, the indices again from the last version.

Without --url it starts the project's local server (scripts/local_lambda.py serve, its registry and training queue
on moto) with an admin key of its own, and stops it on exit (Ctrl-C included). With --url, the admin key comes from
--admin-key or $GPR_SURROGATE_ADMIN_KEY. About a minute on 2 cores.

    .venv/bin/python examples/active_learning.py [--rounds 4] [--q 5] [--initial 10] [--refit-every auto]
    .venv/bin/python examples/active_learning.py --url http://127.0.0.1:3000 --admin-key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gpr_client import LoopRound, SurrogateClient  # pip install ./client (make setup installs it)
from scipy.stats import qmc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEATURES = ["x1", "x2"]
LOW, HIGH = np.array([-5.0, 0.0]), np.array([10.0, 15.0])
BOUNDS = {f: (float(LOW[j]), float(HIGH[j])) for j, f in enumerate(FEATURES)}


def branin(X: np.ndarray) -> np.ndarray:
    """Branin (Dixon & Szego 1978): the simulator. Three global minima of 0.397887."""
    x1, x2 = X[:, 0], X[:, 1]
    return (x2 - 5.1 / (4 * np.pi**2) * x1**2 + 5 / np.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * np.pi)) * np.cos(x1) + 10


def true_indices(n: int = 2**16, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Branin's own first-order and total Sobol' indices (uniform inputs): Saltelli's and Jansen's estimators."""
    rng = np.random.default_rng(seed)
    A, B = rng.uniform(LOW, HIGH, (n, 2)), rng.uniform(LOW, HIGH, (n, 2))
    f_A, f_B = branin(A), branin(B)
    variance = np.var(np.concatenate([f_A, f_B]))
    first, total = [], []
    for j in range(2):
        AB = A.copy()
        AB[:, j] = B[:, j]
        f_AB = branin(AB)
        first.append(np.mean(f_B * (f_AB - f_A)) / variance)
        total.append(0.5 * np.mean((f_A - f_AB) ** 2) / variance)
    return np.array(first), np.array(total)


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


def random_rmse(designs: list[np.ndarray], runs: int, X_test: np.ndarray, y_test: np.ndarray) -> float:
    """Our fit (the service's, run here) on the first `runs` of each random design: the mean test RMSE."""
    import warnings

    from handler.training.fit import fit

    scores = []
    for design in designs:
        X = design[:runs]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            model = fit(X, branin(X)[:, None], np.array([LOW, HIGH]).T, restarts=1).model
        scores.append(rmse(model.predict(X_test)[0][:, 0], y_test))
    return float(np.mean(scores))


# --- the service -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_service(folder: Path) -> Iterator[tuple[str, str]]:
    """scripts/local_lambda.py serve with an admin key of its own: yields its base URL and the key."""
    import httpx

    from scripts.local_lambda import spawn_serve

    key = secrets.token_hex(8)
    log = folder / "server.log"
    process, base_url = spawn_serve(log, "--admin-api-key", key, "-w", "1")
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=30).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the local server did not start:\n{log.read_text()[-3000:]}")
        yield base_url, key
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            process.wait(timeout=30)


# --- the study ---------------------------------------------------------------------------------------------------


def print_indices(answer: dict[str, Any], title: str) -> None:
    first, total = true_indices()
    print(f"{title} (n = {answer['n']}, {answer['posterior_samples']} posterior draws, 95% intervals):")
    print(f"  {'':4} {'first order':>24} {'true':>6}   {'total':>24} {'true':>6}")
    for j, f in enumerate(FEATURES):
        s, t = answer["first_order"][f], answer["total"][f]
        print(f"  {f:4} {s['estimate']:6.3f} [{s['ci_low']:6.3f}, {s['ci_high']:6.3f}] {first[j]:6.3f}   "
              f"{t['estimate']:6.3f} [{t['ci_low']:6.3f}, {t['ci_high']:6.3f}] {total[j]:6.3f}")  # fmt: skip


def study(args: argparse.Namespace, base_url: str, admin_key: str | None) -> None:
    rng = np.random.default_rng(args.seed)
    X_test = rng.uniform(LOW, HIGH, (2_000, 2))
    y_test = branin(X_test)
    X = qmc.scale(qmc.LatinHypercube(d=2, seed=args.seed).random(args.initial), LOW, HIGH)
    budget = args.initial + args.rounds * args.q
    random_designs = [rng.uniform(LOW, HIGH, (budget, 2)) for _ in range(args.repeats)]
    name = args.name or f"branin-active-{secrets.token_hex(3)}"
    started_at = time.monotonic()

    def version_of(number: int) -> SurrogateClient:
        # A version by its number rather than the live alias, which warm environments read again only every few
        # seconds: the version the loop has just moved live to (the admin key reads too)
        return SurrogateClient(base_url, model=name, version=number, api_key=admin_key)

    with SurrogateClient(base_url, admin_key=admin_key) as admin:
        # 1. Train on the initial runs (a training job; the bar shows its stage and restarts)
        job = admin.train(name, (X, branin(X)), features=FEATURES, outputs=["y"], bounds=BOUNDS,
                          promote="always", seed=args.seed, progress=not args.quiet)  # fmt: skip
        print(f"trained {name} version {job['version']} on {args.initial} runs ({job['version_state']}, "
              f"leave-one-out R2 {job['validation']['y']['r2']:.3f})")  # fmt: skip
        serving = {"version": job["version"]}
        with version_of(job["version"]) as served:
            print_indices(
                served.sensitivity(n=args.sobol_n, posterior_samples=args.draws, seed=args.seed),
                f"Sobol' indices of the initial surrogate ({args.initial} runs)",
            )
            first = rmse(served.predict(X_test, latent=True).mean[:, 0], y_test)
        refits = "by the default rule" if args.refit_every == "auto" else f"every {args.refit_every} rounds"
        print(f"Branin; {args.rounds} rounds of {args.q} ({args.acquisition}), a full refit {refits}; "
              f"RMSE on {len(X_test)} test points (Branin's std there: {y_test.std():.1f})")  # fmt: skip
        print(f"{'round':>5} {'runs':>5} {'version':>7} {'RMSE active':>12} {'RMSE random':>12} {'surprise |z|':>12}")
        rows = [(0, args.initial, first, random_rmse(random_designs, args.initial, X_test, y_test))]
        print(f"{0:5d} {args.initial:5d} {job['version']:7d} {rows[0][2]:12.4f} {rows[0][3]:12.4f}", flush=True)

        def after(entry: LoopRound) -> None:
            runs = args.initial + (entry.round + 1) * args.q
            serving["version"] = entry.served or serving["version"]
            with version_of(serving["version"]) as served:
                active = rmse(served.predict(X_test, latent=True).mean[:, 0], y_test)
            rows.append((entry.round + 1, runs, active, random_rmse(random_designs, runs, X_test, y_test)))
            surprise = (entry.surprise or {}).get("y", {}).get("mean_abs_z", float("nan"))
            refit = f"  refit: version {entry.training_job['version']}" if entry.training_job else ""
            print(f"{entry.round + 1:5d} {runs:5d} {entry.version or 0:7d} {active:12.4f} "
                  f"{rows[-1][3]:12.4f} {surprise:12.2f}{refit}", flush=True)  # fmt: skip

        # 2. The loop: suggest, simulate (here), observe (a conditioned version), and a full refit when due
        history = admin.loop(name, branin, rounds=args.rounds, batch=args.q, acquisition=args.acquisition,
                             refit_every=args.refit_every, progress=after, seed=args.seed)  # fmt: skip
        with version_of(serving["version"]) as served:
            print_indices(
                served.sensitivity(n=args.sobol_n, posterior_samples=args.draws, seed=args.seed),
                f"Sobol' indices of the last surrogate ({budget} runs, version {serving['version']})",
            )
    seconds = [r.seconds["total"] for r in history.rounds]
    wins = sum(active < random for _, _, active, random in rows[1:])
    print(f"a round took {np.median(seconds):.2f} s (median; {max(seconds):.2f} s with a full refit)")
    print(f"active learning's RMSE is below random sampling's in {wins} of {len(rows) - 1} rounds "
          f"({time.monotonic() - started_at:.0f} s)")  # fmt: skip


def refit_every(value: str) -> int | str:
    return value if value == "auto" else int(value)


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start the local server here)")
    parser.add_argument("--admin-key", default=os.environ.get("GPR_SURROGATE_ADMIN_KEY"),
                        help="the service's admin key, with --url (default $GPR_SURROGATE_ADMIN_KEY)")  # fmt: skip
    parser.add_argument("--name", help="the model's name in the registry (default: branin-active-<random>)")
    parser.add_argument("--rounds", type=int, default=4, help="suggest-simulate-observe rounds (default 4)")
    parser.add_argument("--q", type=int, default=5, help="runs per round, chosen jointly (default 5)")
    parser.add_argument(
        "--initial", type=int, default=20,
        help="initial Latin-hypercube runs (default 20: from 10, Branin's first model is no better than its mean)",
    )  # fmt: skip
    parser.add_argument(
        "--refit-every", type=refit_every, default="auto",
        help='"auto" (default: when the data has grown by a fifth or the new runs surprised the model) or k rounds',
    )  # fmt: skip
    parser.add_argument(
        "--acquisition", default="integrated_variance", choices=["variance", "integrated_variance"],
        help="what /suggest reduces (default integrated_variance)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="random designs averaged for the baseline (default 2)")
    parser.add_argument("--sobol-n", type=int, default=1024, help="/sensitivity's base sample (default 1024)")
    parser.add_argument("--draws", type=int, default=20, help="/sensitivity's posterior draws (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar while the model trains")
    args = parser.parse_args(argv)
    # SIGTERM as Ctrl-C: the server is stopped and the temporary folder removed on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        if args.url:
            study(args, args.url, args.admin_key)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="active-learning-") as folder,
                local_service(Path(folder)) as (base_url, key),
            ):
                study(args, base_url, key)
    except KeyboardInterrupt:
        print("interrupted: the server is stopped and the temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
