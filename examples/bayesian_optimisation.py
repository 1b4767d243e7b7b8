"""Bayesian optimisation on the served surrogate: the next experiments, from expected improvement's gradient.

The service answers what an acquisition optimiser needs. The next experiment maximises expected improvement
(EI) over the best predicted value; EI's gradient comes from the predictive mean's and variance's gradients
(`include=gradient`), so L-BFGS-B climbs it from a few starts instead of sampling the space; each step is one
HTTP call, and random search with the same number of calls is printed beside. A batch for parallel
simulations then comes from Thompson sampling (`POST /sample`): joint draws of the function over candidate
points, each draw's best point one experiment. Where the posterior is sure of its maximum, the draws agree and
give fewer distinct points than asked: the example says so and takes the rest from `POST /suggest` (expected
improvement, each pick conditioned on the ones before). For the example Park model, the true function at each
proposal.

    make serve &                                   # or any deployment: --url https://.../v1 --api-key KEY
    .venv/bin/python examples/bayesian_optimisation.py [--url http://127.0.0.1:3000] [--batch 4]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from gpr_client import SurrogateClient  # pip install ./client (make setup installs it)
from scipy.optimize import minimize
from scipy.stats import norm, qmc


class NegativeLogEI:
    """-log EI(x) and its gradient, from the service's mean, variance and their gradients (what L-BFGS-B minimises)."""

    def __init__(self, client: SurrogateClient, incumbent: float) -> None:
        self.client, self.incumbent, self.calls = client, incumbent, 0

    def expected_improvement(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        p = self.client.predict(X, latent=True, include=["gradient"])
        assert p.mean_gradient is not None
        assert p.variance_gradient is not None
        mean, std = p.mean[:, 0], np.sqrt(np.maximum(p.variance[:, 0], 1e-300))
        z = (mean - self.incumbent) / std
        ei = (mean - self.incumbent) * norm.cdf(z) + std * norm.pdf(z)
        std_gradient = p.variance_gradient[:, :, 0] / (2 * std[:, None])  # d sqrt(v) = dv / (2 sqrt(v))
        return ei, norm.cdf(z)[:, None] * p.mean_gradient[:, :, 0] + norm.pdf(z)[:, None] * std_gradient

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        ei, gradient = self.expected_improvement(x[None, :])
        ei0 = max(float(ei[0]), 1e-300)
        return -np.log(ei0), -gradient[0] / ei0


def propose(client: SurrogateClient, batch: int, starts: int, seed: int) -> None:
    info = client.model()
    bounds = np.array([info.bounds[f] for f in info.features])
    park_model = info.features == ("x1", "x2", "x3", "x4")
    # One batch request over a scrambled Sobol' design gives the incumbent and the starting points.
    design = qmc.scale(qmc.Sobol(len(bounds), seed=seed).random(1024), bounds[:, 0], bounds[:, 1])
    incumbent = float(client.predict(design).mean[:, 0].max())
    objective = NegativeLogEI(client, incumbent)
    ei, _ = objective.expected_improvement(design)
    print(f"model {info.name} {info.version}; incumbent (best predicted mean of 1024 Sobol' points) {incumbent:.4f}")

    # 1. The next experiment: L-BFGS-B on log EI with the service's gradients, from the best design points.
    calls = objective.calls
    results = [
        minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 100})
        for x0 in design[np.argsort(ei)[-starts:]]
    ]
    best = min(results, key=lambda r: r.fun)
    used = objective.calls - calls
    rng = np.random.default_rng(seed)
    random_points = bounds[:, 0] + rng.uniform(size=(used, len(bounds))) * (bounds[:, 1] - bounds[:, 0])
    random_best = max(objective.expected_improvement(random_points)[0])
    prediction = client.predict(best.x[None, :], latent=True)
    print(f"next experiment: x = [{', '.join(f'{v:.4f}' for v in best.x)}], EI {np.exp(-best.fun):.4g} in {used} "
          f"calls (random search, {used} points: {random_best:.4g}); mean {prediction.mean[0, 0]:.4f} "
          f"+- {np.sqrt(prediction.variance[0, 0]):.4f}"
          + (f"; true Park value {park(best.x):.4f}" if park_model else ""))  # fmt: skip

    # 2. A batch for parallel simulations: Thompson sampling over candidates (the design and the EI optimum).
    candidates = np.vstack([design[np.argsort(ei)[-255:]], best.x])
    draws, meta = client.sample(candidates, batch * 8, seed=seed)
    winners = draws[0].argmax(axis=1)  # each draw's best candidate
    chosen = list(dict.fromkeys(int(w) for w in winners))[:batch]  # in order of first win, no repeats
    print(f"batch of {batch}: {len(chosen)} by Thompson sampling ({len(winners)} joint draws over {len(candidates)} "
          f"candidates, seed {meta['seed']}, jitter {meta['jitter']:.2g})")  # fmt: skip
    for k, index in enumerate(chosen, 1):
        x, wins = candidates[index], int(np.sum(winners == index))
        line = f"  {k}. x = [{', '.join(f'{v:.4f}' for v in x)}], best in {wins} of {len(winners)} draws"
        print(line + (f"; true Park value {park(x):.4f}" if park_model else ""))
    if len(chosen) < batch:
        # A confident posterior puts every draw's maximum on the same few points: more draws repeat them. The rest
        # of the batch comes from /suggest, whose picks are conditioned on the points above and on each other.
        rest = batch - len(chosen)
        print(f"  fewer than {batch}: the {len(winners)} draws peaked at only {len(chosen)} distinct candidate(s) (a "
              "posterior sure of where its maximum lies puts the draws' maxima on the same few points). The other "
              f"{rest} from POST /suggest (expected improvement over {incumbent:.4f}, each pick conditioned on the "
              "points before it):")  # fmt: skip
        more = client.suggest(q=rest, acquisition="expected_improvement", goal="maximize", output=info.outputs[0],
                              pending=candidates[chosen], best=incumbent, seed=seed)  # fmt: skip
        for k, (x, value) in enumerate(zip(more.points, more.acquisition, strict=True), len(chosen) + 1):
            line = f"  {k}. x = [{', '.join(f'{v:.4f}' for v in x)}], EI {value:.4g} when picked"
            print(line + (f"; true Park value {park(x):.4f}" if park_model else ""))


def park(x: np.ndarray) -> float:
    """Park (1991): the function the example model was trained on."""
    x1, x2, x3, x4 = x
    x1 = max(x1, 1e-9)
    return float(x1 / 2 * (np.sqrt(1 + (x2 + x3**2) * x4 / x1**2) - 1) + (x1 + 3 * x4) * np.exp(1 + np.sin(x3)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--batch", type=int, default=4, help="experiments to propose")
    parser.add_argument("--starts", type=int, default=4, help="L-BFGS-B starts per proposal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with SurrogateClient(args.url, args.api_key) as client:
        propose(client, args.batch, args.starts, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
