"""What a request costs on the model being served, and the time it has: checked before the work and during it.

The cost is a flop model of what the code does, per point, for THIS model (known at load: m training or inducing
points, d features, p outputs, exact or sparse inference, the draws' random features), in seconds of one vCPU:

    mean           m (kernel) + 2 m p            a cross-covariance row and its product with the weights
    variance       m^2 (exact: one TRMM row)     2 m^2 for sparse (a GEMM row by the m x m woodbury_inv)
    a draw         F (d + p) + F cosines + 2 m p   F random features per draw, and the pathwise update
    draw setup     m k F cosines + 4 m^2 k p     the draws' prior at the m inputs and the update's solve

and the statistics' passes over the outputs, with the seconds per flop, per kernel value, per cosine and per pass
below. They were measured on one BLAS thread (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, as on a 1,769 MB function):
`python benchmarks/analyses.py --calibrate` times each term on synthetic models of m = 1,000 and 4,000 against its
estimate, and `--sizes` every route's largest accepted request per model size (within 0.5-1.1x of the estimate).

The budget: a request may cost at most (timeout - RESERVED_S) / ANALYSIS_SAFETY seconds as estimated here: (15 - 1)
/ 3 = 4.7 s for the template's 15 s. The factor 3 is the margin: the constants were measured on an x86_64 core with
AVX-512 (53 GFLOPS in a one-thread matrix product); the function runs on arm64 (Graviton2: 2 x 128-bit FMA units,
20 GFLOPS peak a core), so matrix products there may take ~2.5x as long (an estimate from the peak rates, not
measured here), and the flop model is within 0.5-1.1x of what benchmarks/analyses.py measures. What the
margin does not cover, the deadline does: Lambda's remaining time is checked between chunks of the work (504).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from handler.gp.posterior import TRMM_MIN_ROWS, GPPosterior

# Seconds per unit on one thread (benchmarks/analyses.py --calibrate; a 2-core x86_64, numpy's OpenBLAS), rounded up
GEMM_S = 0.019e-9  # per flop (multiply or add) of a matrix product
TRMM_S = 0.016e-9  # per m^2 of a variance row (a triangular solve against L, or TRMM by a legacy file's L^-1), and
SOLVE_ROW_S = 30e-9  # per m of it (the solve's overhead: 0.047 ns per m^2 measured at m = 1,000, 0.015 at 4,000)
# per kernel value k(x, u): the distance from one product, then exp (RBF) or exp, sqrt and a polynomial (Matern)
KERNEL_S = {"RBF": 4e-9, "Exponential": 16e-9, "Matern32": 16e-9, "Matern52": 16e-9}
COSINE_S = 5e-9  # per random feature per point per draw (float32 cosine, its angle and its weight)
COSINE_EXACT_S = 26e-9  # per random feature at the model's inputs (float64 cosine: the update's right-hand side)
SOBOL_S = 30e-9  # /sensitivity: per output value per bootstrap resample or draw (the estimators' passes)
STATISTICS_S = 60e-9  # /propagate: per output value per resample or draw, for the moments (and the calls); and
THRESHOLD_S = 0.8e-9  # per value per threshold, and
SORT_S = 3.5e-9  # per value per log2(n) for the quantiles (a partial sort), and
HISTOGRAM_S = 200e-9  # per value per draw for the draws' own histograms and statistics across them
CALL_S = 200e-6  # per output per resample: numpy's calls, whatever n (a quantile call), and
THRESHOLD_CALL_S = 11e-6  # each threshold's
CROSS_PICK_S = 8e-9  # /suggest integrated variance: per reference x candidate pair per pick (score, then update)
TRACK_ROW_S = 0.15e-9  # /suggest: per m^2 flop of a single-row product (memory bound: a pick's or pending point's)
# A sparse model's draws need, once, the Cholesky factor of Kzz, its inverse, Kzz^-1 and the root of Kzz^-1 - A:
# 0.13 ns per m^3 measured at m = 3,000 (LAPACK's inverse is the slowest part)
SPARSE_FACTOR_S_PER_M3 = 0.14e-9

ANALYSIS_SAFETY = 3.0
RESERVED_S = 1.0  # serialising and returning the answer, and the last chunk's overrun


def analysis_budget_seconds(timeout_seconds: float) -> float:
    """Estimated seconds one analysis may cost: a third of the timeout less the reserve (4.7 s for 15 s)."""
    return max(0.0, (timeout_seconds - RESERVED_S) / ANALYSIS_SAFETY)


@dataclass(frozen=True)
class CostModel:
    """Seconds of one vCPU for the work of a request, on a model of m inputs, d features and p outputs."""

    m: int
    d: int
    p: int
    sparse: bool
    features: int  # random Fourier features per posterior draw
    kernel_name: str = "Matern52"

    @classmethod
    def of(cls, posterior: GPPosterior, features: int) -> CostModel:
        m, d = posterior.inputs.shape
        p, sparse = int(posterior.woodbury_vector.shape[1]), posterior.inference == "sparse"
        return cls(int(m), int(d), p, sparse, features, posterior.kernel)

    def kernel(self, points: int) -> float:
        return points * self.m * (KERNEL_S[self.kernel_name] + 2 * (self.d + 2) * GEMM_S)

    def mean(self, points: int) -> float:
        return self.kernel(points) + points * 2 * self.m * self.p * GEMM_S

    def variance(self, points: int) -> float:
        if self.sparse:
            return points * self.m**2 * 2 * GEMM_S
        return points * self.m * (self.m * TRMM_S + SOLVE_ROW_S)

    def predict(self, points: int) -> float:
        return self.mean(points) + self.variance(points)

    def gradients(self, points: int) -> float:
        """/predict's include=gradient: distances, the kernel and K A (two m x m products exact, one sparse)."""
        products = 2 if self.sparse else 4
        return self.kernel(points) * 2 + points * self.m * (products * self.m + 2 * self.d * self.p) * GEMM_S

    def covariance(self, points: int) -> float:
        joint = points**2 * (2 * self.m * GEMM_S + KERNEL_S[self.kernel_name])
        return self.predict(points) + joint + points * self.m**2 * 2 * GEMM_S

    def sample(self, points: int, samples: int) -> float:
        """/sample: the predictions, the joint covariance, and per output its Cholesky factor (n^3 / 3) and the
        draws (a product by the factor: 2 n^2 per sample)."""
        per_output = (points**3 / 3 + 2 * points**2 * samples) * GEMM_S
        return self.predict(points) + self.covariance(points) + self.p * per_output

    def draws(self, points: int, draws: int) -> float:
        """The draws (and the posterior mean, from the same kernel rows) at the points."""
        per_draw = self.features * (COSINE_S + 2 * (self.d + self.p) * GEMM_S) + 2 * self.m * self.p * GEMM_S
        return self.mean(points) + points * draws * per_draw

    def draw_setup(self, draws: int, factorised: bool) -> float:
        """The draws' prior at the m inputs and the update's solve; a sparse model's factorisation if not cached."""
        prior = self.m * draws * self.features * (COSINE_EXACT_S + 2 * (self.d + self.p) * GEMM_S)
        solve = 4 * self.m**2 * draws * self.p * GEMM_S
        return prior + solve + (0.0 if factorised or not self.sparse else self.sparse_factorisation())

    def sparse_factorisation(self) -> float:
        return SPARSE_FACTOR_S_PER_M3 * self.m**3

    def sensitivity_statistics(self, points: int, draws: int, resamples: int) -> float:
        return self.p * points * (resamples + draws) * SOBOL_S

    def propagate_statistics(self, points: int, draws: int, resamples: int, quantiles: int, thresholds: int) -> float:
        per_value = STATISTICS_S + THRESHOLD_S * thresholds + (SORT_S * math.log2(max(points, 2)) if quantiles else 0.0)
        calls = (resamples + 1) * (CALL_S + THRESHOLD_CALL_S * thresholds)
        return self.p * (points * ((resamples + max(draws, 1)) * per_value + draws * HISTOGRAM_S) + calls)

    def track(self, points: int, set_size: int) -> float:
        """/suggest: points' kernel rows, whitened rows and variances, in sets of `set_size` points (exact: TRMM
        for sets of TRMM_MIN_ROWS or more, a GEMM by L^-T, twice the flops, for fewer; sparse: a GEMM by A)."""
        whitening = (
            self.variance(points) if self.sparse or set_size >= TRMM_MIN_ROWS else points * 2 * self.m**2 * GEMM_S
        )
        return self.kernel(points) + whitening + points * 2 * self.m * self.p * GEMM_S

    def track_row(self) -> float:
        """/suggest: one point's rows (a pick or a pending point), a matrix-vector product: memory bound."""
        return self.m * (KERNEL_S[self.kernel_name] + self.m * TRACK_ROW_S * (2 if self.sparse else 1))


class DeadlineExceeded(Exception):  # noqa: N818 - not an error of the caller's: the time ran out
    """The function's remaining time will not cover the next chunk of work: answer 504, not a killed function."""

    def __init__(self, done: str) -> None:
        super().__init__(done)
        self.done = done


class Deadline:
    """Lambda's remaining time, checked between chunks: a chunk starts only while the time left exceeds the
    reserve plus what the previous chunk took."""

    def __init__(
        self,
        remaining_ms: Callable[[], int],
        reserved_s: float = RESERVED_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.remaining_ms = remaining_ms
        self.reserved_s = reserved_s
        self.clock = clock
        self._last = clock()

    def lap(self) -> None:
        """Start timing the chunks now: what ran since the last check (a one-off setup, such as the posterior
        draws') is no chunk, and taking its time as the next chunk's would refuse work that fits."""
        self._last = self.clock()

    def check(self, done: str) -> None:
        """Raise DeadlineExceeded (saying what was done: `done`) when the next chunk may not finish in time."""
        now = self.clock()
        last_chunk_s, self._last = now - self._last, now
        if self.remaining_ms() / 1000 < self.reserved_s + last_chunk_s:
            raise DeadlineExceeded(done)


def no_deadline() -> Deadline:
    return Deadline(lambda: 2**31, 0.0)
