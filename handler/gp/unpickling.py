"""The restricted unpickler: the GPy route's only way to read a pickled model (a pickle is code).

Used only for models the numpy posterior file cannot describe; the common case never enters this module.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle reached for something a GPy model is not made of, or past what one needs; `name` says what."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"the pickle references {name}, which a GPy model does not use")
        self.name = name


# Every class a pickle of a supported model names, as (defining module, qualified name): recorded by pickling each
# model type, kernel, likelihood, inference, mean function, prior, constraint and optimiser the service supports
# (GPRegression, SparseGPRegression, GPy.core.GP), with every pickle protocol. tests/test_unpickling.py records them
# again from fresh models and fails on anything missing here (as after a GPy upgrade). A class is only ever rebuilt
# as pickle rebuilds it, created without calling it and then given its state: a pickle that calls one is refused.
_MODEL_CLASSES = frozenset(
    {
        ("GPy.core.gp", "GP"),
        ("GPy.core.parameterization.param", "Param"),
        *(("GPy.core.parameterization.priors", name) for name in ("Gamma", "Gaussian", "LogGaussian")),
        ("GPy.inference.latent_function_inference.exact_gaussian_inference", "ExactGaussianInference"),
        *(("GPy.inference.latent_function_inference.expectation_propagation", name) for name in (
            "EP", "cavityParams", "gaussianApproximation", "posteriorParams",
        )),
        ("GPy.inference.latent_function_inference.laplace", "Laplace"),
        *(("GPy.inference.latent_function_inference.posterior", name) for name in (
            "Posterior", "PosteriorEP", "PosteriorExact",
        )),
        ("GPy.inference.latent_function_inference.var_dtc", "VarDTC"),
        ("GPy.kern.src.add", "Add"),
        ("GPy.kern.src.brownian", "Brownian"),
        ("GPy.kern.src.linear", "Linear"),
        ("GPy.kern.src.mlp", "MLP"),
        *(("GPy.kern.src.periodic", name) for name in (
            "PeriodicExponential", "PeriodicMatern32", "PeriodicMatern52",
        )),
        ("GPy.kern.src.poly", "Poly"),
        ("GPy.kern.src.prod", "Prod"),
        ("GPy.kern.src.psi_comp", "PSICOMP_Linear"),
        ("GPy.kern.src.psi_comp", "PSICOMP_RBF"),
        ("GPy.kern.src.psi_comp.gaussherm", "PSICOMP_GH"),
        ("GPy.kern.src.rbf", "RBF"),
        ("GPy.kern.src.standard_periodic", "StdPeriodic"),
        *(("GPy.kern.src.static", name) for name in ("Bias", "White")),
        *(("GPy.kern.src.stationary", name) for name in (
            "Cosine", "ExpQuad", "Exponential", "Matern32", "Matern52", "OU", "RatQuad",
        )),
        ("GPy.likelihoods.bernoulli", "Bernoulli"),
        ("GPy.likelihoods.gaussian", "Gaussian"),
        *(("GPy.likelihoods.link_functions", name) for name in ("Identity", "Log", "Probit")),
        ("GPy.likelihoods.poisson", "Poisson"),
        ("GPy.likelihoods.student_t", "StudentT"),
        ("GPy.mappings.constant", "Constant"),
        ("GPy.mappings.linear", "Linear"),
        ("GPy.models.gp_classification", "GPClassification"),
        ("GPy.models.gp_regression", "GPRegression"),
        ("GPy.models.sparse_gp_regression", "SparseGPRegression"),
        ("GPy.util.normalizer", "Standardize"),
        *(("paramz.core.index_operations", name) for name in (
            "ParameterIndexOperations", "ParameterIndexOperationsView",
        )),
        ("paramz.core.lists_and_dicts", "ArrayList"),
        ("paramz.core.observable_array", "ObsAr"),
        *(("paramz.optimization.optimization", name) for name in (
            "opt_SCG", "opt_bfgs", "opt_lbfgsb", "opt_simplex", "opt_tnc",
        )),
        *(("paramz.transformations", name) for name in ("Logexp", "Logistic", "NegativeLogexp")),
    }
)  # fmt: skip
# Number and boolean dtypes: an object dtype lets an array's state make numpy read past a list (a crash).
_PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
# The only state numpy gives such a dtype; another (object flags, fields) would change what its arrays hold.
_PLAIN_DTYPE_STATE_TAIL = (None, None, None, -1, -1, 0)


def _is_model_class(obj: Any) -> bool:
    return isinstance(obj, type) and (obj.__module__, obj.__qualname__) in _MODEL_CLASSES


def _is_plain_dtype(obj: Any) -> bool:
    return isinstance(obj, np.dtype) and obj.kind in "biufc" and obj.fields is None and not obj.hasobject


def _is_plain_dtype_state(state: Any) -> bool:
    return (
        type(state) is tuple
        and len(state) == 8
        and all(type(item) in (int, str, type(None)) for item in state)
        and state[:2] in ((3, "<"), (3, ">"), (3, "|"), (3, "="))
        and state[2:] == _PLAIN_DTYPE_STATE_TAIL
    )


def _is_array_type(obj: Any) -> bool:
    return obj is np.ndarray or (_is_model_class(obj) and issubclass(obj, np.ndarray))


def _is_function(obj: Any, module: str, qualname: str) -> bool:
    return isinstance(obj, types.FunctionType) and (obj.__module__, obj.__qualname__) == (module, qualname)


def _is_reconstruction(cls: Any, base: Any, state: Any) -> bool:
    """Protocols 0 and 1 rebuild an object as `_reconstructor(cls, object, None)`, a list subclass with its items."""
    if not _is_model_class(cls):
        return False
    return (base is object and state is None) or (base is list and type(state) is list and issubclass(cls, list))


# What model pickles call (REDUCE), each with the only arguments they pass: nothing here can be made to allocate
# more than the pickle's own bytes (no `bytes(n)`, no array of a shape without its data, no iterator to expand).
_CALLS: dict[tuple[str, str], Callable[..., bool]] = {
    ("builtins", "bytes"): lambda *args: not args,  # b"" in protocols 0-2; other bytes come as _codecs.encode
    ("_codecs", "encode"): lambda text, encoding: type(text) is str and type(encoding) is str and encoding == "latin1",
    ("builtins", "set"): lambda items: type(items) is list,
    ("builtins", "slice"): lambda *args: len(args) <= 3 and all(a is None or type(a) is int for a in args),
    ("collections", "OrderedDict"): lambda *args: not args,  # its items follow as SETITEMS
    ("copyreg", "_reconstructor"): _is_reconstruction,
    ("numpy", "dtype"): lambda name, align, copy: (
        type(name) is str and name in _PLAIN_DTYPES and type(align) is bool and type(copy) is bool
    ),
    # An empty array, given its shape and data by its state (numpy checks that they agree).
    ("numpy._core.multiarray", "_reconstruct"): lambda subtype, shape, typecode: (
        _is_array_type(subtype) and type(shape) is tuple and shape == (0,) and type(typecode) is bytes
        and typecode == b"b"
    ),
    ("numpy._core.multiarray", "scalar"): lambda dtype, data: _is_plain_dtype(dtype) and type(data) is bytes,
    # Protocol 5: a view of the pickle's own bytes (numpy checks that the shape fits them).
    ("numpy._core.numeric", "_frombuffer"): lambda buffer, dtype, shape, order: (
        type(buffer) in (bytes, bytearray) and _is_plain_dtype(dtype) and type(shape) is tuple
        and all(type(n) is int for n in shape) and type(order) is str and order in ("C", "F")
    ),
    ("paramz.core.lists_and_dicts", "IntArrayDict"): lambda default_factory: _is_function(
        default_factory, "paramz.core.lists_and_dicts", "intarray_default_factory"
    ),
}  # fmt: skip
# Globals a model pickle only passes to one of the calls above.
_ARGUMENTS = frozenset(
    {
        ("numpy", "ndarray"),  # to _reconstruct
        ("builtins", "object"),  # to _reconstructor (protocols 0 and 1)
        ("builtins", "list"),
        ("paramz.core.lists_and_dicts", "intarray_default_factory"),  # to IntArrayDict
    }
)
# The names older writers gave the same modules: Python 2's (protocols 0-2) and numpy 1.x's.
_RENAMED_MODULES = {
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}
ADMITTED_GLOBALS = _MODEL_CLASSES | _CALLS.keys() | _ARGUMENTS

# Real model pickles take 1,000-2,500 opcodes, whatever their data's size (an array is one opcode). The cap bounds
# what the opcodes themselves can build (an empty set, the largest object one byte makes, is 216 bytes) and the time.
MAX_PICKLE_OPCODES = 100_000
# Hashing a tuple recurses in C: ~10^5 nested tuples overflow the stack. Real pickles nest a few deep.
MAX_TUPLE_NESTING = 100


def _describe(obj: Any) -> str:
    if isinstance(obj, _Call):
        return obj.name
    if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _holds(predicate: Callable[..., bool], *args: Any) -> bool:
    try:
        return bool(predicate(*args))
    except Exception:  # another number of arguments, or a comparison that fails
        return False


class _Call:
    """A callable that model pickles call, admitted only with the arguments they give it."""

    __slots__ = ("accepts", "name", "target")

    def __init__(self, name: str, accepts: Callable[..., bool], target: Callable[..., Any]) -> None:
        self.name, self.accepts, self.target = name, accepts, target

    def __call__(self, *args: Any) -> Any:
        if not _holds(self.accepts, *args):
            given = ", ".join(type(arg).__name__ for arg in args[:4]) + (", ..." if len(args) > 4 else "")
            raise UnsafePickleError(
                self.name, f"the pickle calls {self.name} with arguments ({given}) that no model pickle passes"
            )
        return self.target(*args)


# The pure-Python unpickler's handler of each opcode (typeshed types them loosely).
_BASE = cast(dict[int, Callable[[Any], None]], pickle._Unpickler.dispatch)


class _ExactReader:
    """The pickle's bytes, read exactly: a read past the end is a truncated pickle, not shorter data."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def read(self, size: int) -> bytes:
        data: bytes = self.file.read(size)  # io.BytesIO and mmap never allocate more than they hold
        if len(data) < size:
            raise pickle.UnpicklingError("pickle data was truncated")
        return data

    def readline(self) -> bytes:
        line: bytes = self.file.readline()
        return line


def _stack_below_mark(unpickler: RestrictedUnpickler) -> list[Any]:
    if not unpickler.metastack:
        raise pickle.UnpicklingError("could not find MARK")
    return unpickler.metastack[-1]


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickles only what GPy models are made of, as their pickles build it; anything else is refused first.

    The pure-Python unpickler (the one joblib and dill extend), so that every opcode that calls, creates or fills
    something is checked: only the calls in `_CALLS` with the arguments model pickles pass; classes of
    `_MODEL_CLASSES` created without arguments and given their state once; no more opcodes, bytes or nesting than
    a model needs; at most one model (a model computes its posterior when given its state).
    """

    # Set by pickle._Unpickler.load (typeshed does not declare them).
    stack: list[Any]
    metastack: list[list[Any]]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    readinto: Callable[[bytearray], int]

    def __init__(self, file: Any) -> None:
        super().__init__(_ExactReader(file))
        start = file.tell()
        file.seek(0, io.SEEK_END)
        self.pickle_bytes = file.tell() - start
        file.seek(start)
        self.opcodes_left = MAX_PICKLE_OPCODES
        self.given_state: dict[int, Any] = {}  # id -> object, kept alive so that an id is never reused
        self.tuple_nesting: dict[int, tuple[int, Any]] = {}
        self.models = 0

    def load(self) -> Any:
        try:
            return super().load()
        except (IndexError, KeyError, struct.error) as exc:  # how the pure-Python unpickler meets a broken stream
            raise pickle.UnpicklingError(f"the pickle is malformed ({type(exc).__name__}: {exc})") from exc

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        key = (module, name)
        if key not in ADMITTED_GLOBALS:
            raise UnsafePickleError(f"{module}.{name}")  # before importing anything
        found = super().find_class(module, name)
        if (getattr(found, "__module__", None), getattr(found, "__qualname__", None)) != key or (
            key in _MODEL_CLASSES and not isinstance(found, type)
        ):
            raise UnsafePickleError(f"{module}.{name}", f"{module}.{name} is not the class model pickles name")
        if key in _CALLS:
            return _Call(f"{module}.{name}", _CALLS[key], found)
        return found

    def pop_mark(self) -> list[Any]:
        """As pickle._Unpickler's, with the C unpickler's error for a missing MARK (not an IndexError)."""
        items = self.stack
        self.stack = _stack_below_mark(self)
        self.metastack.pop()
        self.append = self.stack.append
        return items

    def refuse(self, what: Any, message: str) -> NoReturn:
        raise UnsafePickleError(_describe(what), message.format(_describe(what)))

    def count_opcode(self) -> None:
        self.opcodes_left -= 1
        if self.opcodes_left < 0:
            raise UnsafePickleError(
                "opcodes", f"the pickle has more than {MAX_PICKLE_OPCODES} opcodes; a model's has a few thousand"
            )

    def load_reduce(self) -> None:
        if not isinstance(self.stack[-2], _Call):
            self.refuse(self.stack[-2], "the pickle calls {}, which no model pickle calls")
        _BASE[pickle.REDUCE[0]](self)

    def check_creation(self, cls: Any, args: Any, kwargs: Any) -> None:
        if not _is_model_class(cls):
            self.refuse(cls, "the pickle creates {}, which a GPy model is not made of")
        if not (type(args) is tuple and not args and type(kwargs) is dict and not kwargs):
            self.refuse(cls, "the pickle creates {} with arguments; model pickles give state only")

    def load_newobj(self) -> None:
        self.check_creation(self.stack[-2], self.stack[-1], {})
        _BASE[pickle.NEWOBJ[0]](self)

    def load_newobj_ex(self) -> None:
        self.check_creation(self.stack[-3], self.stack[-2], self.stack[-1])
        _BASE[pickle.NEWOBJ_EX[0]](self)

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, np.dtype):
            if not _holds(_is_plain_dtype_state, state):
                self.refuse(target, "the pickle gives {} a state numpy never writes")
        elif not (type(target) is np.ndarray or _is_model_class(type(target))):
            self.refuse(target, "the pickle sets the state of {}, which model pickles never do")
        if id(target) in self.given_state:
            self.refuse(target, "the pickle sets the state of {} twice")
        self.given_state[id(target)] = target
        if any((c.__module__, c.__qualname__) == ("paramz.model", "Model") for c in type(target).__mro__):
            self.models += 1
            if self.models > 1:
                self.refuse(target, "the pickle holds more than one model ({})")
        _BASE[pickle.BUILD[0]](self)

    def check_container(self, target: Any, kind: type) -> None:
        if not isinstance(target, kind):
            self.refuse(target, f"the pickle adds items to {{}}, not to a {kind.__name__}")

    def load_append(self) -> None:
        self.check_container(self.stack[-2], list)
        _BASE[pickle.APPEND[0]](self)

    def load_appends(self) -> None:
        self.check_container(_stack_below_mark(self)[-1], list)
        _BASE[pickle.APPENDS[0]](self)

    def load_setitem(self) -> None:
        self.check_container(self.stack[-3], dict)
        _BASE[pickle.SETITEM[0]](self)

    def load_setitems(self) -> None:
        self.check_container(_stack_below_mark(self)[-1], dict)
        _BASE[pickle.SETITEMS[0]](self)

    def load_additems(self) -> None:
        self.check_container(_stack_below_mark(self)[-1], set)
        _BASE[pickle.ADDITEMS[0]](self)

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self.pickle_bytes:  # checked before the bytearray is made (and zeroed)
            raise UnsafePickleError("BYTEARRAY8", f"the pickle declares {length} bytes but holds {self.pickle_bytes}")
        data = bytearray(length)
        self.readinto(data)
        self.append(data)

    def nest(self, items: Any, opcode: bytes) -> None:
        """Run a tuple or frozenset opcode on `items`, refusing nesting deeper than MAX_TUPLE_NESTING."""
        depth = 1 + max(
            (self.tuple_nesting.get(id(item), (1, None))[0] for item in items if type(item) in (tuple, frozenset)),
            default=0,
        )
        if depth > MAX_TUPLE_NESTING:
            raise UnsafePickleError("nesting", f"the pickle nests tuples over {MAX_TUPLE_NESTING} deep")
        _BASE[opcode[0]](self)
        self.tuple_nesting[id(self.stack[-1])] = (depth, self.stack[-1])


def _refused_opcode(name: str) -> Callable[[RestrictedUnpickler], None]:
    def refuse(unpickler: RestrictedUnpickler) -> None:
        raise UnsafePickleError(name, f"the pickle uses opcode {name}, which no model pickle does")

    return refuse


def _counted(load: Callable[[Any], None]) -> Callable[[RestrictedUnpickler], None]:
    def counted(unpickler: RestrictedUnpickler) -> None:
        unpickler.count_opcode()
        load(unpickler)

    return counted


_DISPATCH: dict[int, Callable[[Any], None]] = {
    code: _counted(load)
    for code, load in {
        **_BASE,
        pickle.REDUCE[0]: RestrictedUnpickler.load_reduce,
        pickle.NEWOBJ[0]: RestrictedUnpickler.load_newobj,
        pickle.NEWOBJ_EX[0]: RestrictedUnpickler.load_newobj_ex,
        pickle.BUILD[0]: RestrictedUnpickler.load_build,
        pickle.APPEND[0]: RestrictedUnpickler.load_append,
        pickle.APPENDS[0]: RestrictedUnpickler.load_appends,
        pickle.SETITEM[0]: RestrictedUnpickler.load_setitem,
        pickle.SETITEMS[0]: RestrictedUnpickler.load_setitems,
        pickle.ADDITEMS[0]: RestrictedUnpickler.load_additems,
        pickle.BYTEARRAY8[0]: RestrictedUnpickler.load_bytearray8,
        pickle.TUPLE[0]: lambda u: u.nest(u.stack, pickle.TUPLE),
        pickle.TUPLE1[0]: lambda u: u.nest(u.stack[-1:], pickle.TUPLE1),
        pickle.TUPLE2[0]: lambda u: u.nest(u.stack[-2:], pickle.TUPLE2),
        pickle.TUPLE3[0]: lambda u: u.nest(u.stack[-3:], pickle.TUPLE3),
        pickle.FROZENSET[0]: lambda u: u.nest(u.stack, pickle.FROZENSET),
        # Python 3 writes none of these for a model: old-style instances, extension codes, persistent ids.
        **{opcode[0]: _refused_opcode(name) for name, opcode in (
            ("INST", pickle.INST), ("OBJ", pickle.OBJ), ("EXT1", pickle.EXT1), ("EXT2", pickle.EXT2),
            ("EXT4", pickle.EXT4), ("PERSID", pickle.PERSID), ("BINPERSID", pickle.BINPERSID),
        )},
    }.items()
}  # fmt: skip
RestrictedUnpickler.dispatch = _DISPATCH


def load_pickle(path: Path) -> Any:
    """The object in a pickle, through RestrictedUnpickler (memory-mapped: a read never asks for more than is there)."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise pickle.UnpicklingError("the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return RestrictedUnpickler(view).load()
