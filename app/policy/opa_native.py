"""The one place this service reaches past the public API of the OPA bindings
(`opa_bindings`, distribution opa-golib-python-bindings, pinned in setup.cfg).

`OpaEngine.eval_query` encodes the input and decodes the answer with the standard
library's json; app/policy/embedded.py does both with orjson instead (see
`evaluate_query` there), so it needs the native call underneath, which the bindings keep
private. What it relies on, as bindings 0.4.4 have it:

    engine._lib.OpaEvalQuery(handle: c_uint64, query: c_char_p, input: c_char_p,
                             coverage: c_int, trace: c_int) -> c_void_p
        a JSON envelope in memory the caller frees: {"result": [{"bindings": ...}, ...],
        "prints": [...]} or {"error": {"code": ..., "message": ...}}
    engine._lib.OpaFreeString(pointer: c_void_p) -> None
    engine._handle      the engine's native handle, None once it is closed
    engine._eval_lock   the lock the bindings' own evaluations hold

A ctypes call with other argument types than the library's is a crash, not an exception,
so the first call here checks those declarations (`check_bindings`) and raises
`BindingsChanged`, naming the installed version, when a release changed them.
tests/test_opa_bindings.py checks the same, and that an answer through here is the
public API's.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from collections.abc import Iterator
from typing import Any

from opa_bindings import OpaEngine, OpaError

DISTRIBUTION = "opa-golib-python-bindings"

# name -> (argtypes, restype), as the bindings declare them (opa_bindings/_native.py).
NATIVE_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "OpaEvalQuery": ([ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                      ctypes.c_int], ctypes.c_void_p),
    "OpaFreeString": ([ctypes.c_void_p], None),
}


class BindingsChanged(RuntimeError):
    """The installed bindings lack what this module relies on, or declare it otherwise."""


def bindings_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _type_names(types: Any) -> str:
    return "None" if types is None else getattr(types, "__name__", repr(types))


def _shape_problems(engine: Any) -> Iterator[str]:
    lib = getattr(engine, "_lib", None)
    if lib is None:
        yield "OpaEngine._lib is missing"
        return
    for name, (argtypes, restype) in NATIVE_FUNCTIONS.items():
        function = getattr(lib, name, None)  # a CDLL raises AttributeError for a missing one
        if function is None:
            yield f"the native library has no {name}"
            continue
        declared = list(getattr(function, "argtypes", None) or ())
        returns = getattr(function, "restype", None)
        if declared != argtypes or returns is not restype:
            yield (f"{name} is declared ({', '.join(map(_type_names, declared))}) -> "
                   f"{_type_names(returns)}, not ({', '.join(map(_type_names, argtypes))}) "
                   f"-> {_type_names(restype)}")
    if not hasattr(engine, "_handle"):
        yield "OpaEngine._handle is missing"
    lock = getattr(engine, "_eval_lock", None)
    if not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
        yield "OpaEngine._eval_lock is missing or not a lock"


_checked: Any = None  # the native library found as expected (the bindings load one)


def check_bindings(engine: OpaEngine) -> None:
    """BindingsChanged, naming the installed version and what differs, unless `engine` has
    the private parts this module calls, declared as it calls them."""
    global _checked
    lib = getattr(engine, "_lib", None)
    if lib is not None and lib is _checked:
        return
    problems = list(_shape_problems(engine))
    if problems:
        raise BindingsChanged(
            f"the OPA bindings installed ({DISTRIBUTION} {bindings_version()}) changed what "
            f"app/policy/opa_native.py relies on: {'; '.join(problems)}. Adapt that module "
            "to them, or install the version setup.cfg pins.")
    _checked = lib


def eval_query_envelope(engine: OpaEngine, query: bytes, policy_input: bytes) -> bytes:
    """The JSON envelope (see the module's docstring) OPA answers `query` with, under
    `policy_input` (JSON; b"": no input), without coverage or trace: what the bindings'
    `eval_query` decodes, under the same lock. OpaError when the engine is closed."""
    check_bindings(engine)
    with engine._eval_lock:
        handle = engine._handle
        if handle is None:
            raise OpaError("closed", "engine has been closed")
        pointer = engine._lib.OpaEvalQuery(handle, query, policy_input, 0, 0)
        if not pointer:
            raise OpaError("internal", "native call returned NULL")
        try:
            return ctypes.string_at(pointer)
        finally:
            engine._lib.OpaFreeString(pointer)
