"""Train the packaged surrogate: a GPy GPRegression (RBF-ARD) on the Park (1991) function over [0, 1]^4.

Deterministic for a given seed and library versions: running it again gives the same predictions.

    python scripts/train_model.py [--output model_artifacts/pretrained-model.npz] [--source park.pkl]

Packaged as a posterior file by scripts/package_model.py (its quality gate included: hold-out and leave-one-out R2
of ~1, nowhere near the refusal threshold); `--source` also keeps the fitted GPy model's pickle.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.stats import qmc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.api.schemas import ModelManifest
from handler.gp.artifact import manifest_path_for
from handler.gp.gpy_model import GPRegressionModel
from scripts.package_model import package

DEFAULT_SEED = 20261126
FEATURES = ["x1", "x2", "x3", "x4"]


def park1991(X: np.ndarray) -> np.ndarray:
    """Park (1991) test function on [0, 1)^4 (Cox, Park & Singer 2001; the SFU simulation library's `park91a`)."""
    x1, x2, x3, x4 = X.T
    x1 = np.maximum(x1, 1e-12)  # the function is singular at x1 = 0
    term1 = x1 / 2 * (np.sqrt(1 + (x2 + x3**2) * x4 / x1**2) - 1)
    term2 = (x1 + 3 * x4) * np.exp(1 + np.sin(x3))
    return term1 + term2


def train(
    output: Path,
    *,
    n_train: int = 200,
    n_holdout: int = 1000,
    restarts: int = 5,
    seed: int = DEFAULT_SEED,
    max_iters: int = 1000,
    source: Path | None = None,
    gpy_route: bool = False,
    publish_training_data: Literal["inputs", "inputs_and_outputs"] | None = "inputs_and_outputs",
) -> tuple[ModelManifest, Path]:
    """Fit, package (`output`'s name: a posterior file and its manifest), and return the manifest and the artifact.

    `source`: where to keep the fitted GPy model's pickle as well (tests compare against GPy itself);
    `gpy_route`: package the pickle, served through GPy, rather than a posterior file. `publish_training_data`: a
    test function has nothing to keep private, so the explorer draws the points near its slices by default.
    """
    X_train = qmc.LatinHypercube(d=len(FEATURES), seed=seed).random(n_train)
    y_train = park1991(X_train)
    X_holdout = qmc.LatinHypercube(d=len(FEATURES), seed=seed + 1).random(n_holdout)
    y_holdout = park1991(X_holdout)

    model = GPRegressionModel.fit(X_train, y_train[:, None], restarts=restarts, seed=seed, max_iters=max_iters)
    pickle_bytes = pickle.dumps(model.gp, protocol=pickle.HIGHEST_PROTOCOL)
    if source is not None:
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(pickle_bytes)
    return package(
        model,
        pickle_bytes,
        output,
        features=FEATURES,
        outputs=["y"],
        bounds={name: (0.0, 1.0) for name in FEATURES},
        name="park1991",
        version_label="1",
        description="The Park (1991) test function on [0, 1]^4, a GPy GPRegression with an RBF-ARD kernel",
        holdout=(X_holdout, y_holdout[:, None]),
        training={
            "script": "scripts/train_model.py",
            "function": "park1991",
            "design": "Latin hypercube (scipy.stats.qmc)",
            "seed": seed,
            "restarts": restarts,
            "max_iters": max_iters,
            "holdout_design": f"Latin hypercube, seed {seed + 1}",
        },
        gpy_route=gpy_route,
        publish_training_data=publish_training_data,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("model_artifacts/pretrained-model.npz"))
    parser.add_argument("--source", type=Path, help="also keep the fitted GPy model's pickle here")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-holdout", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--max-iters", type=int, default=1000, help="optimiser iterations per restart")
    args = parser.parse_args(argv)
    manifest, artifact = train(
        args.output,
        source=args.source,
        n_train=args.n_train,
        n_holdout=args.n_holdout,
        restarts=args.restarts,
        seed=args.seed,
        max_iters=args.max_iters,
    )
    print(f"wrote {artifact} and {manifest_path_for(artifact).name}")
    print(manifest.model_dump_json(include={"holdout", "leave_one_out", "kernel"}))


if __name__ == "__main__":
    main()
