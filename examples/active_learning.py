"""Active learning with the served surrogate: a sensitivity study, then rounds of POST /suggest against random runs.

The Branin function (two inputs, x1 in [-5, 10], x2 in [0, 15]) stands in for an expensive simulator. The
example simulates an initial Latin-hypercube design, fits a GPy model, packages it as a posterior file
(scripts/package_model.py) into a temporary folder and serves it with the project's Docker-free local server
(scripts/local_lambda.py, the model given by MODEL_PATH). It asks the served model for Sobol' indices
(`client.sensitivity`, intervals widened by posterior draws), beside the function's own (a large Monte-Carlo
estimate on Branin itself). Then, each round, it asks `client.suggest(q=...)` for the next q runs, simulates
them, refits, repackages and serves the new model; beside it, GPs fitted on as many uniformly random runs (the
mean over --repeats random designs). Each round prints both RMSEs on a fixed test set of 2,000 random points;
at the end, the indices again from the last model. The server and the temporary files are removed on exit
(Ctrl-C included). About a minute on 2 cores.

    .venv/bin/python examples/active_learning.py [--rounds 4] [--q 5] [--initial 10] [--acquisition variance]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gpr_client import SurrogateClient  # pip install ./client (make setup installs it)
from scipy.stats import qmc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.gp.gpy_model import GPRegressionModel  # noqa: E402
from scripts.package_model import package  # noqa: E402

FEATURES = ["x1", "x2"]
LOW, HIGH = np.array([-5.0, 0.0]), np.array([10.0, 15.0])


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


def fit(X: np.ndarray, y: np.ndarray) -> GPRegressionModel:
    """A GPy GPRegression, Matern-5/2 ARD, started at lengthscales a third of each range (deterministic)."""
    import GPy

    kernel = GPy.kern.Matern52(2, lengthscale=(HIGH - LOW) / 3, ARD=True)
    gp = GPy.models.GPRegression(X, y[:, None], kernel, normalizer=True)
    gp.likelihood.variance = 1e-6  # a deterministic simulator: little noise
    gp.likelihood.variance.constrain_bounded(1e-8, 1e-2, warning=False)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the optimiser tries overflowing lengthscales
        warnings.simplefilter("ignore", RuntimeWarning)
        gp.optimize(max_iters=150)
    return GPRegressionModel(gp)


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


# --- packaging and serving -------------------------------------------------------------------------------------


def package_into(model: GPRegressionModel, folder: Path, round_: int) -> Path:
    """The model packaged as the packaging command does (a posterior file and its manifest) into `folder`."""
    bounds = {f: (float(LOW[j]), float(HIGH[j])) for j, f in enumerate(FEATURES)}
    pickle_bytes = pickle.dumps(model.gp, protocol=pickle.HIGHEST_PROTOCOL)
    manifest, artifact = package(
        model, pickle_bytes, folder / f"round-{round_}" / "branin.npz",
        features=FEATURES, bounds=bounds, name="branin", version_label=str(round_),
        description=f"Branin, active-learning round {round_}",
        force=True,  # a start of 10 runs is rough by design (leave-one-out R2 < 0.5 for some seeds): rounds improve it
    )  # fmt: skip
    if manifest.format != "npz":
        print(f"note: round {round_}'s model is served through GPy ({manifest.predict_through_gpy}); "
              "the analyses routes need a posterior file", file=sys.stderr)  # fmt: skip
    return artifact


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(artifact: Path, folder: Path) -> Iterator[str]:
    """scripts/local_lambda.py serve (API only, one warm environment) on the artifact; yields its base URL."""
    env_file = folder / f"{artifact.parent.name}-env.json"
    env_file.write_text(json.dumps({"Parameters": {"MODEL_PATH": str(artifact)}}))
    log = folder / f"{artifact.parent.name}-server.log"
    for _ in range(3):  # a free port may be taken before the server binds it: try another
        port = free_port()
        command = [sys.executable, str(ROOT / "scripts" / "local_lambda.py"), "--env-vars", str(env_file),
                   "serve", "--port", str(port), "--workers", "1", "--no-jobs"]  # fmt: skip
        with log.open("w") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "SAM_CLI_TELEMETRY": "0"}
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            if started(process, base_url):
                yield base_url
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise RuntimeError(f"the local server did not start:\n{log.read_text()}")


def started(process: subprocess.Popen[bytes], base_url: str) -> bool:
    import httpx

    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health", timeout=10).status_code == 200:
                return True
        time.sleep(0.1)
    return False


# --- the study -------------------------------------------------------------------------------------------------


def print_indices(answer: dict[str, Any], title: str) -> None:
    first, total = true_indices()
    print(f"{title} (n = {answer['n']}, {answer['posterior_samples']} posterior draws, 95% intervals):")
    print(f"  {'':4} {'first order':>24} {'true':>6}   {'total':>24} {'true':>6}")
    for j, f in enumerate(FEATURES):
        s, t = answer["first_order"][f], answer["total"][f]
        print(f"  {f:4} {s['estimate']:6.3f} [{s['ci_low']:6.3f}, {s['ci_high']:6.3f}] {first[j]:6.3f}   "
              f"{t['estimate']:6.3f} [{t['ci_low']:6.3f}, {t['ci_high']:6.3f}] {total[j]:6.3f}")  # fmt: skip


def study(args: argparse.Namespace, folder: Path) -> None:
    rng = np.random.default_rng(args.seed)
    X_test = rng.uniform(LOW, HIGH, (2_000, 2))
    y_test = branin(X_test)
    X = qmc.scale(qmc.LatinHypercube(d=2, seed=args.seed).random(args.initial), LOW, HIGH)
    y = branin(X)
    random_X = [rng.uniform(LOW, HIGH, (args.initial + args.rounds * args.q, 2)) for _ in range(args.repeats)]
    started_at = time.monotonic()

    def random_rmse(runs: int) -> float:
        # The same initial design as active learning in round 0; then as many runs, uniformly at random.
        scores = []
        for points in random_X:
            design = X[: args.initial] if runs == args.initial else points[:runs]
            scores.append(rmse(fit(design, branin(design)).predict(X_test)[0][:, 0], y_test))
        return float(np.mean(scores))

    print(f"Branin; {args.initial} initial runs, {args.rounds} rounds of {args.q} ({args.acquisition}); "
          f"RMSE on {len(X_test)} test points (Branin's std there: {y_test.std():.1f})")  # fmt: skip
    rows = []
    model = fit(X, y)
    for round_ in range(args.rounds + 1):
        artifact = package_into(model, folder, round_)
        with serving(artifact, folder) as base_url, SurrogateClient(base_url) as client:
            if round_ == 0:
                print_indices(
                    client.sensitivity(n=args.sobol_n, posterior_samples=args.draws, seed=args.seed),
                    f"Sobol' indices of the initial surrogate ({len(X)} runs)",
                )
                print(f"{'round':>5} {'runs':>5} {'RMSE active':>12} {'RMSE random':>12}")
            active = rmse(client.predict(X_test, latent=True).mean[:, 0], y_test)
            rows.append((round_, len(X), active, random_rmse(len(X))))
            print(f"{round_:5d} {len(X):5d} {active:12.4f} {rows[-1][3]:12.4f}", flush=True)
            if round_ == args.rounds:
                print_indices(
                    client.sensitivity(n=args.sobol_n, posterior_samples=args.draws, seed=args.seed),
                    f"Sobol' indices of the last surrogate ({len(X)} runs)",
                )
                break
            suggestions = client.suggest(q=args.q, acquisition=args.acquisition, seed=args.seed + round_)
        X = np.vstack([X, suggestions.points])  # simulate the suggested runs, then refit
        y = np.concatenate([y, branin(suggestions.points)])
        model = fit(X, y)
    wins = sum(active < random for _, _, active, random in rows[1:])
    print(f"active learning's RMSE is below random sampling's in {wins} of {len(rows) - 1} rounds "
          f"({time.monotonic() - started_at:.0f} s)")  # fmt: skip


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="suggest-simulate-refit rounds (default 4)")
    parser.add_argument("--q", type=int, default=5, help="runs per round, chosen jointly (default 5)")
    parser.add_argument("--initial", type=int, default=10, help="initial Latin-hypercube runs (default 10)")
    parser.add_argument(
        "--acquisition", default="integrated_variance", choices=["variance", "integrated_variance"],
        help="what /suggest reduces (default integrated_variance)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="random designs averaged for the baseline (default 2)")
    parser.add_argument("--sobol-n", type=int, default=1024, help="/sensitivity's base sample (default 1024)")
    parser.add_argument("--draws", type=int, default=20, help="/sensitivity's posterior draws (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # SIGTERM as Ctrl-C: the server is stopped and the temporary folder removed on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="active-learning-") as folder:
            study(args, Path(folder))
    except KeyboardInterrupt:
        print("interrupted: the server is stopped and the temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
