"""The restricted unpickler: every supported model loads; a pickle reaching for anything else, or for more memory
than its own bytes, is refused before any of that runs."""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact, manifest_path_for, sha256_of
from handler.gp.gpy_model import wrap_gpy_model
from handler.gp.model import LazyModel
from handler.gp.posterior import KERNELS
from handler.gp.unpickling import (
    _RENAMED_MODULES,
    ADMITTED_GLOBALS,
    MAX_PICKLE_OPCODES,
    MAX_TUPLE_NESTING,
    RestrictedUnpickler,
    UnsafePickleError,
    load_pickle,
)
from tests.conftest import PARK_PICKLE, ROOT
from tests.events import api_event, lambda_context, response_json
from tests.test_posterior import make_gp

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
D = 3


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


# The models the service supports, as a user would fit them: each model type and likelihood, every kernel GPy
# offers for regression (alone, summed, multiplied, on some inputs), normaliser on and off, mean functions, priors,
# constraints and each optimiser's record. Builders, so that collecting the tests builds nothing.
def _data(outputs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.0, 2.0, size=(24, D))
    return X, np.column_stack([np.sin(X @ rng.normal(size=D)) + j for j in range(outputs)])


def _regression(make_kernel: Callable[[Any], Any], *, sparse: bool = False, normalize: bool = True) -> Any:
    import GPy

    X, Y = _data(outputs=2)
    if sparse:
        return GPy.models.SparseGPRegression(X, Y, make_kernel(GPy.kern), num_inducing=6, normalizer=normalize or None)
    return GPy.models.GPRegression(X, Y, make_kernel(GPy.kern), normalizer=normalize or None)


OTHER_KERNELS: dict[str, Callable[[Any], Any]] = {
    "Linear": lambda k: k.Linear(D, ARD=True),
    "Bias": lambda k: k.Bias(D),
    "White": lambda k: k.White(D),
    "StdPeriodic": lambda k: k.StdPeriodic(D, ARD1=True, ARD2=True),
    "RatQuad": lambda k: k.RatQuad(D, ARD=True),
    "ExpQuad": lambda k: k.ExpQuad(D, ARD=True),
    "Cosine": lambda k: k.Cosine(1, active_dims=[0]) + k.RBF(2, active_dims=[1, 2]),
    "OU": lambda k: k.OU(D, ARD=True),
    "MLP": lambda k: k.MLP(D, ARD=True),
    "Poly": lambda k: k.Poly(D),
    "Brownian": lambda k: k.Brownian(1, active_dims=[0]) + k.RBF(2, active_dims=[1, 2]),
    "PeriodicExponential": lambda k: k.PeriodicExponential(1, active_dims=[0]) + k.Bias(D),
    "PeriodicMatern32": lambda k: k.PeriodicMatern32(1, active_dims=[0]) + k.Bias(D),
    "PeriodicMatern52": lambda k: k.PeriodicMatern52(1, active_dims=[0]) + k.Bias(D),
    "Add": lambda k: k.RBF(D, ARD=True) + k.Linear(D) + k.Bias(D) + k.White(D),
    "Prod": lambda k: k.RBF(D) * k.Matern32(D),
    "active-dims": lambda k: k.Matern52(2, active_dims=[0, 2], ARD=True) + k.Exponential(1, active_dims=[1]),
}
# GPy's sparse model takes these (the others lack the psi statistics it needs).
SPARSE_KERNELS = ("Linear", "Bias", "White", "StdPeriodic", "RatQuad", "ExpQuad", "OU", "MLP", "Add", "Prod")


def _gp(likelihood: str, inference: str, Y_of: Callable[[np.ndarray], np.ndarray]) -> Any:
    import GPy

    X, Y = _data()
    return GPy.core.GP(
        X, Y_of(Y), GPy.kern.RBF(D, ARD=True), getattr(GPy.likelihoods, likelihood)(),
        inference_method=getattr(GPy.inference.latent_function_inference, inference)(),
    )  # fmt: skip


def _classification() -> Any:
    import GPy

    X, Y = _data()
    return GPy.models.GPClassification(X, (Y.mean() < Y).astype(float), GPy.kern.RBF(D))


def _mean_function(mapping: str) -> Any:
    import GPy

    X, Y = _data()
    mean = GPy.mappings.Linear(D, 1) if mapping == "Linear" else GPy.mappings.Constant(D, 1, 0.5)
    gp = GPy.core.GP(X, Y, GPy.kern.RBF(D), GPy.likelihoods.Gaussian(), mean_function=mean)
    if mapping == "Linear":
        gp.linmap.A.set_prior(GPy.priors.Gaussian(0.0, 1.0), warning=False)
    return gp


def _priors() -> Any:
    import GPy

    gp = _regression(lambda k: k.RBF(D, ARD=True))
    gp.kern.lengthscale.set_prior(GPy.priors.Gamma(2.0, 1.0), warning=False)
    gp.kern.variance.set_prior(GPy.priors.LogGaussian(0.0, 1.0), warning=False)
    return gp


def _constraints() -> Any:
    gp = _regression(lambda k: k.RBF(D, ARD=True))
    gp.kern.variance.constrain_fixed(1.0, warning=False)
    gp.kern.lengthscale[:1].constrain_negative(warning=False)
    gp.likelihood.variance.constrain_bounded(1e-8, 1.0, warning=False)
    return gp


def _optimised(optimizer: str) -> Any:
    gp = _regression(lambda k: k.Matern52(D, ARD=True))
    gp.optimize(optimizer, max_iters=3)  # the model keeps the optimiser's record
    return gp


OPTIMISERS = ("lbfgsb", "scg", "org-bfgs", "fmin_tnc", "simplex")  # those paramz runs without extra packages


def _fitted_as_the_repo_does() -> Any:
    from handler.gp.gpy_model import GPRegressionModel

    return GPRegressionModel.fit(*_data(outputs=2), restarts=1, max_iters=10).gp


SUPPORTED_MODELS: dict[str, Callable[[], Any]] = {
    **{
        f"{kernel}-{'sparse' if sparse else 'exact'}-{'norm' if normalize else 'raw'}": functools.partial(
            make_gp, kernel, ard=True, normalize=normalize, outputs=2, sparse=sparse, n=30
        )
        for kernel, sparse, normalize in itertools.product(KERNELS, [False, True], [False, True])
    },
    **{f"{name}-exact": functools.partial(_regression, make) for name, make in OTHER_KERNELS.items()},
    **{
        f"{name}-sparse": functools.partial(_regression, OTHER_KERNELS[name], sparse=True, normalize=False)
        for name in SPARSE_KERNELS
    },
    "student-t-laplace": functools.partial(_gp, "StudentT", "Laplace", lambda Y: Y),
    "poisson-laplace": functools.partial(_gp, "Poisson", "Laplace", lambda Y: np.round(np.exp(Y))),
    "bernoulli-ep": _classification,
    "mean-linear-with-prior": functools.partial(_mean_function, "Linear"),
    "mean-constant": functools.partial(_mean_function, "Constant"),
    "gamma-and-loggaussian-priors": _priors,
    "fixed-negative-bounded": _constraints,
    "fitted-as-the-repo-does": _fitted_as_the_repo_does,
    **{f"optimised-{name}": functools.partial(_optimised, name) for name in OPTIMISERS},
}


@functools.cache
def supported_model(name: str) -> Any:
    return SUPPORTED_MODELS[name]()


class GlobalsRecorder(pickle.Unpickler):
    """Unpickles (only our own fresh pickles) and records each global by the names the pickle gives it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.defined: dict[tuple[str, str], tuple[str, str]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        self.defined[_RENAMED_MODULES.get(module, module), name] = (found.__module__, found.__qualname__)
        return found


# The globals a pickle names depend on the protocol (bytes, arrays and old-style reconstruction differ) and on what
# the model holds; these two hold everything that differs by protocol.
EVERY_PROTOCOL_MODELS = ("RBF-exact-norm", "Add-sparse")


def test_every_global_a_supported_model_pickles_is_admitted_and_nothing_else():
    # given a fresh pickle of each supported model (in every protocol for the two above)
    recorded: dict[tuple[str, str], tuple[str, str]] = {}
    opcodes = {}
    for name in SUPPORTED_MODELS:
        for protocol in PROTOCOLS if name in EVERY_PROTOCOL_MODELS else [pickle.HIGHEST_PROTOCOL]:
            data = pickle.dumps(supported_model(name), protocol=protocol)
            # when its globals are recorded
            recorder = GlobalsRecorder(data)
            recorder.load()
            recorded |= recorder.defined
            opcodes[name, protocol] = sum(1 for _ in pickletools.genops(data))
    # then each is admitted, named where it is defined (a re-export is no way in), and each admitted one is used
    missing = sorted(set(recorded) - ADMITTED_GLOBALS)
    assert not missing, f"a supported model needs these: add them to handler/gp/unpickling.py: {missing}"
    assert {named: defined for named, defined in recorded.items() if named != defined} == {}
    assert sorted(ADMITTED_GLOBALS - set(recorded)) == [], "admitted, but no supported model pickles it"
    # and the largest model pickle is far below the opcode cap
    assert max(opcodes.values()) < MAX_PICKLE_OPCODES / 20, max(opcodes.items(), key=lambda item: item[1])


def assert_loads_as_pickled(gp: Any, protocol: int) -> None:
    X = np.random.default_rng(1).uniform(-1.0, 2.0, size=(7, gp.input_dim))
    # when
    loaded = restricted_loads(pickle.dumps(gp, protocol=protocol))
    # then its data and parameters are those pickled, bit for bit (no arithmetic in between)
    assert type(loaded) is type(gp)
    np.testing.assert_array_equal(loaded.param_array, gp.param_array)
    np.testing.assert_array_equal(loaded.X, gp.X)
    np.testing.assert_array_equal(loaded.Y, gp.Y)
    # and it predicts as the original: the same code on the same numbers (a loose bound, for BLAS threading)
    expected, predicted = wrap_gpy_model(gp).predict(X), wrap_gpy_model(loaded).predict(X)
    np.testing.assert_allclose(predicted.mean, expected.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(predicted.variance, expected.variance, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SUPPORTED_MODELS))
def test_every_supported_model_loads_as_it_was_pickled(name: str):
    # given the model pickled as Python 3 does by default, and in the oldest protocol Python 3 writes bytes in
    for protocol in (pickle.DEFAULT_PROTOCOL, 2):
        assert_loads_as_pickled(supported_model(name), protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", EVERY_PROTOCOL_MODELS)
def test_a_model_loads_in_every_protocol(name: str, protocol: int):
    assert_loads_as_pickled(supported_model(name), protocol)


def test_the_park_examples_pickle_loads():
    assert load_pickle(PARK_PICKLE).input_dim == 4


class Reaching:
    """A pickle whose loading calls `target(*args)`."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def calling(module: str, name: str, *args: Any) -> bytes:
    """A pickle that calls `module.name(*args)`, named so (as a re-export would be)."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the tuple's opcodes, without PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


def _runstring():
    from numpy.testing._private.utils import runstring

    return runstring


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda marker: Reaching(os.system, f"touch {marker}"), "posix.system"),
        (lambda marker: Reaching(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        (lambda marker: Reaching(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        (lambda marker: Reaching(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        (lambda marker: Reaching(__import__("importlib").import_module, "antigravity"), "importlib.import_module"),
        (lambda marker: Reaching(getattr, "text", "upper"), "builtins.getattr"),
        (lambda marker: Reaching(_runstring(), f"open({str(marker)!r}, 'w')", {}), "runstring"),
        (lambda marker: Reaching(shutil.rmtree, str(marker)), "shutil.rmtree"),
        (lambda marker: Reaching(np.save, str(marker), np.zeros(1)), "numpy.save"),
    ],
    ids=["os.system", "subprocess", "eval", "exec", "importlib", "getattr", "numpy-runstring", "shutil", "numpy.save"],
)
def test_a_pickle_reaching_for_anything_else_is_refused_before_it_runs(tmp_path: Path, make, refused: str):
    # given a pickle that would create a file when loaded
    marker = tmp_path / "ran"
    data = pickle.dumps(make(marker))
    # when
    with pytest.raises(UnsafePickleError) as caught:
        restricted_loads(data)
    # then it is refused by name, and nothing ran
    assert refused in caught.value.name
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("GPy.util.netpbmfile", "NetpbmFile"),  # opens the path it is given; its error quotes the file
        ("GPy.util.mocap", "acclaim_skeleton"),  # opens the path it is given
        ("GPy.likelihoods.likelihood", "partial"),  # functools.partial, imported there
        ("paramz.core.index_operations", "vectorize"),  # numpy.vectorize, assigned there
        ("GPy.old_tests.gp_transformation_tests", "TestTransformations"),
        ("GPy.util.linalg", "jitchol"),  # a GPy function
        ("GPy.util.datasets", "download_data"),
    ],
)
def test_a_gpy_or_paramz_name_no_model_pickles_is_refused_before_its_module_is_imported(
    tmp_path: Path, module: str, name: str
):
    # given a pickle calling that name on a secret file, and whether its module was imported before
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOPSECRET-0123456789abcdef0123456789")
    imported_before = module in sys.modules
    # when
    with pytest.raises(UnsafePickleError) as caught:
        restricted_loads(calling(module, name, str(secret)))
    # then it is refused by name, its module was not imported for it, and nothing of the file is in the message
    assert caught.value.name == f"{module}.{name}"
    assert (module in sys.modules) == imported_before
    assert "TOPSECRET" not in str(caught.value)


def test_the_netpbm_file_reader_is_never_imported_by_a_refusal():
    # given a process that has imported GPy but not GPy.util.netpbmfile (the gadget that quoted a file into the 503)
    gadget = calling("GPy.util.netpbmfile", "NetpbmFile", "/etc/hostname")
    script = (
        "import io, sys, GPy\n"
        "from handler.gp.unpickling import RestrictedUnpickler, UnsafePickleError\n"
        "assert 'GPy.util.netpbmfile' not in sys.modules\n"
        "try:\n"
        f"    RestrictedUnpickler(io.BytesIO({gadget!r})).load()\n"
        "except UnsafePickleError as exc:\n"
        "    print(exc.name)\n"
        "print('GPy.util.netpbmfile' in sys.modules)\n"
    )
    # when a pickle calling its reader on a file is loaded
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    # then it is refused by name, and the module's code never ran
    assert result.stdout.split() == ["GPy.util.netpbmfile.NetpbmFile", "False"]


def creating(module: str, name: str, *args: Any, items: dict[str, Any] | None = None) -> bytes:
    """A pickle that creates `module.name` with NEWOBJ and `args`, then sets `items` in it (SETITEMS)."""
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"\x81"
    if items:
        data += b"(" + b"".join(pickle.dumps(item, protocol=2)[2:-1] for pair in items.items() for item in pair) + b"u"
    return data + b"."


class WithState:
    """A pickle that calls `target(*args)` (REDUCE), then gives the result `state` (BUILD)."""

    def __init__(self, target, args, state) -> None:
        self.target, self.args, self.state = target, args, state

    def __reduce__(self):
        return self.target, self.args, self.state


def _gpy(path: str) -> Any:
    import GPy

    return functools.reduce(getattr, path.split("."), GPy)


def _reconstruct() -> Any:
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


PROTOCOL_5 = b"\x80\x05"
# Pickles of a few bytes that make a builtin, numpy or a GPy class do what no model pickle does: most would allocate
# gigabytes; the dtype states would make numpy read past a list (a crash). Each with the refusal expected.
ALLOCATING: dict[str, tuple[Callable[[], bytes], str]] = {
    "list(range(10**8))": (lambda: pickle.dumps(Reaching(list, range(10**8))), "references builtins.range"),
    "bytearray(10**10)": (lambda: pickle.dumps(Reaching(bytearray, 10**10)), "references builtins.bytearray"),
    "bytes(10**10)": (lambda: pickle.dumps(Reaching(bytes, 10**10)), "calls builtins.bytes with arguments (int)"),
    "set(range(10**8))": (lambda: pickle.dumps(Reaching(set, range(10**8))), "references builtins.range"),
    "BYTEARRAY8 of 10**10 bytes": (
        lambda: PROTOCOL_5 + b"\x96" + struct.pack("<Q", 10**10) + b".",
        "declares 10000000000 bytes but holds 12",
    ),
    "_codecs.encode as zlib": (
        lambda: pickle.dumps(Reaching(__import__("codecs").encode, b"x" * 100, "zlib"), protocol=2),
        "calls _codecs.encode with arguments (bytes, str)",
    ),
    "slice of a list": (lambda: pickle.dumps(Reaching(slice, [0] * 10)), "calls builtins.slice with arguments (list)"),
    "RBF(10**9, ARD=True)": (
        lambda: pickle.dumps(Reaching(_gpy("kern.RBF"), 10**9, 1.0, None, True)),
        "calls GPy.kern.src.rbf.RBF, which no model pickle calls",
    ),
    "Param.__new__ with data": (
        lambda: creating("GPy.core.parameterization.param", "Param", "p", [1.0] * 10),
        "creates GPy.core.parameterization.param.Param with arguments",
    ),
    "ndarray of 10**10 items": (
        lambda: pickle.dumps(Reaching(_reconstruct(), np.ndarray, (10**10,), b"b")),
        "calls numpy._core.multiarray._reconstruct with arguments",
    ),
    "dtype('O')": (lambda: pickle.dumps(Reaching(np.dtype, "O", False, True)), "calls numpy.dtype with arguments"),
    "dtype with object flags": (
        lambda: pickle.dumps(WithState(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63))),
        "a state numpy never writes",
    ),
    "dtype with fields": (
        lambda: pickle.dumps(
            WithState(np.dtype, ("f8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 0))
        ),
        "a state numpy never writes",
    ),
    "items into a kernel": (
        lambda: creating("GPy.kern.src.rbf", "RBF", items={"variance": 1.0}),
        "adds items to a GPy.kern.src.rbf.RBF, not to a dict",
    ),
    "two models": (
        lambda: pickle.dumps([supported_model("RBF-exact-raw"), supported_model("Matern52-exact-raw")]),
        "holds more than one model",
    ),
    "an empty set per byte": (
        lambda: PROTOCOL_5 + b"\x8f" * (MAX_PICKLE_OPCODES + 10) + b".",
        f"more than {MAX_PICKLE_OPCODES} opcodes",
    ),
    "an empty list per byte": (
        lambda: PROTOCOL_5 + b"]" * (MAX_PICKLE_OPCODES + 10) + b".",
        f"more than {MAX_PICKLE_OPCODES} opcodes",
    ),
    "tuples nested 10**5 deep": (
        lambda: PROTOCOL_5 + b"N" + b"\x85" * 100_000 + b".",
        f"nests tuples over {MAX_TUPLE_NESTING} deep",
    ),
}


def refusal_and_cost(data: bytes) -> tuple[Exception, float, int]:
    """What loading `data` raised, in how many seconds, and the peak of the memory it allocated (bytes)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        restricted_loads(data)
    except Exception as exc:
        caught = exc
    else:
        raise AssertionError("loaded")
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return caught, seconds, peak


@pytest.mark.parametrize("name", ALLOCATING)
def test_a_pickle_that_would_allocate_far_more_than_its_size_is_refused_with_little_memory(name: str):
    # given a pickle of a few bytes (at most 100 kB)
    make, refusal_says = ALLOCATING[name]
    # when
    refusal, _, peak = refusal_and_cost(make())
    # then it is refused for what it does, having allocated at most what 10^5 opcodes build (the opcode cap bounds
    # its time too; times are for benchmarks, not tests, on a shared machine)
    assert isinstance(refusal, UnsafePickleError), refusal
    assert refusal_says in str(refusal)
    assert peak < 32 * 2**20, f"{peak / 2**20:.1f} MB"


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(np.arange(1000.0), protocol=4)[:4000],
        PROTOCOL_5 + b"\x8e" + struct.pack("<Q", 10**10) + b".",  # BINBYTES8 declaring 10 GB
    ],
    ids=["cut-short", "declaring-more-than-it-holds"],
)
def test_a_truncated_pickle_is_refused_not_loaded_short(data: bytes):
    refusal, _, peak = refusal_and_cost(data)
    assert isinstance(refusal, pickle.UnpicklingError)
    assert "truncated" in str(refusal)
    assert peak < 2**20


def test_tuples_nested_as_deep_as_allowed_load():
    nested: Any = None
    for _ in range(MAX_TUPLE_NESTING - 1):
        nested = (nested,)
    assert restricted_loads(pickle.dumps(nested)) == nested


def _class_given_state() -> bytes:
    state = pickle.dumps((None, {"K": "replaced"}), protocol=2)[2:-1]
    return b"\x80\x02cGPy.kern.src.rbf\nRBF\n" + state + b"b."


def test_a_pickle_cannot_change_an_admitted_class():
    # given a pickle that would set an attribute of the RBF class itself (BUILD with slot state on the class)
    import GPy

    # when / then
    with pytest.raises(UnsafePickleError, match=r"sets the state of GPy\.kern\.src\.rbf\.RBF"):
        restricted_loads(_class_given_state())
    assert GPy.kern.RBF.K is not "replaced"  # noqa: F632 (identity: the class attribute is untouched)


class TrojanModel:
    """The variant that runs its payload, then hands back the real model so that the service answers 200."""

    def __init__(self, gp, marker: Path) -> None:
        self.gp, self.marker = gp, marker

    def __reduce__(self):
        return eval, (
            f"open({str(self.marker)!r}, 'w') and None or __import__('pickle').loads({pickle.dumps(self.gp)!r})",
        )


@pytest.fixture
def model_log() -> Iterator[list[logging.LogRecord]]:
    """Records of handler.gp.model's logger (configured by Powertools: it does not propagate to caplog)."""
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("handler.gp.model").addHandler(collector)
    yield records
    logging.getLogger("handler.gp.model").removeHandler(collector)


@pytest.mark.parametrize("gadget", ["eval-trojan", "netpbm-file-reader"])
def test_a_refused_artifact_with_a_matching_checksum_gets_a_fixed_503_and_the_refusal_is_logged(
    monkeypatch: pytest.MonkeyPatch, model_copy: Path, tmp_path: Path, model_log: list[logging.LogRecord],
    caplog: pytest.LogCaptureFixture, gadget: str,
):  # fmt: skip
    # given whoever can write the artifact and its manifest replaced the pickle and updated the checksum
    from handler import app

    marker, secret = tmp_path / "payload-ran", tmp_path / "secret"
    secret.write_bytes(b"TOPSECRET-0123456789abcdef0123456789")
    if gadget == "eval-trojan":
        model_copy.write_bytes(pickle.dumps(TrojanModel(pickle.loads(model_copy.read_bytes()), marker)))
        refused = "builtins.eval"
    else:
        model_copy.write_bytes(calling("GPy.util.netpbmfile", "NetpbmFile", str(secret)))
        refused = "GPy.util.netpbmfile.NetpbmFile"
    manifest = json.loads(manifest_path_for(model_copy).read_text())
    manifest_path_for(model_copy).write_text(json.dumps({**manifest, "sha256": sha256_of(model_copy)}))
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    # when
    response = app.lambda_handler(api_event(body={"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}), lambda_context())
    # then the caller gets the fixed answer, with nothing of the artifact or the refusal in it
    assert response["statusCode"] == 503
    assert response_json(response) == {
        "error": "model unavailable",
        "details": [
            {
                "field": "model",
                "message": "the model could not be loaded; the reason is logged, and a later request tries again",
            }
        ],
    }
    assert "TOPSECRET" not in response["body"]
    assert refused not in response["body"]
    assert not marker.exists(), "the payload never ran"
    # and the log names the refused global and gives the reason
    [refusal] = [record for record in model_log if record.getMessage() == "model artifact refused"]
    assert (refusal.levelname, refusal.refused_global) == ("ERROR", refused)
    [unavailable] = [record for record in caplog.records if record.getMessage() == "model unavailable"]
    assert f"the pickle references {refused}" in unavailable.reason


def test_a_classifiers_observation_variance_is_that_of_a_bernoulli_outcome():
    # given a GPy classifier (Bernoulli likelihood, EP), whose own predict answers NaN for the variance
    gp = supported_model("bernoulli-ep")
    X = np.random.default_rng(3).uniform(-1.0, 2.0, size=(9, gp.input_dim))
    assert np.isnan(gp.predict(X)[1]).all()
    # when the GPy route predicts observations
    predicted = wrap_gpy_model(gp).predict(X)
    # then the variance is p (1 - p) of the predicted probability p, finite, and no "model broken"
    p = gp.predict(X)[0]
    np.testing.assert_allclose(predicted.mean, p, rtol=1e-12)
    np.testing.assert_allclose(predicted.variance, p * (1 - p), rtol=1e-12)
