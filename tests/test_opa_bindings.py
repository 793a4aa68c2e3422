"""The private parts of the OPA bindings app/policy/opa_native.py calls, against the
bindings installed: a release that renames them, declares them otherwise or answers
otherwise through them fails here, by name, before it crashes a decision."""

from __future__ import annotations

import ctypes
import re
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from opa_bindings import OpaEngine, OpaError

from app.policy import opa_native
from app.policy.embedded import evaluate_query
from app.policy.opa_native import BindingsChanged, bindings_version, check_bindings

VERSION = f"{opa_native.DISTRIBUTION} {bindings_version()}"

POLICY = """package t

import rego.v1

limits := {"small": 10, "large": 1000}

allowed contains name if {
    some name, limit in limits
    input.amount <= limit
}

over := input.amount - data.budget.available

kinds contains kind if some kind in input.kinds
"""


@pytest.fixture
def engine() -> Any:
    engine = OpaEngine()
    engine.add_policy("t.rego", POLICY)
    engine.add_data({"available": 100}, path="budget")
    yield engine
    engine.close()


def test_the_native_query_call_is_declared_as_opa_native_calls_it(engine: Any) -> None:
    lib = getattr(engine, "_lib", None)
    assert lib is not None, f"{VERSION}: OpaEngine._lib is gone"
    for name, (argtypes, restype) in opa_native.NATIVE_FUNCTIONS.items():
        function = getattr(lib, name, None)
        assert function is not None, f"{VERSION}: the native library has no {name}"
        assert list(function.argtypes) == argtypes, f"{VERSION}: {name}'s arguments changed"
        assert function.restype is restype, f"{VERSION}: {name}'s result type changed"
    assert opa_native.NATIVE_FUNCTIONS["OpaEvalQuery"] == (
        [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
        ctypes.c_void_p)
    assert isinstance(engine._handle, int), f"{VERSION}: OpaEngine._handle changed"
    assert isinstance(engine._eval_lock, type(threading.RLock())), \
        f"{VERSION}: OpaEngine._eval_lock is no longer a re-entrant lock"
    check_bindings(engine)


@pytest.mark.parametrize(("query", "policy_input"), [
    ("x := data.t.allowed", {"amount": 50}),
    ("x := data.t.over", {"amount": 250}),
    ("x := data.t.kinds; y := data.t.allowed", {"amount": 5, "kinds": ["a", "b"]}),
    ("some k in data.t.kinds", {"kinds": ["a", "b", "c"]}),  # several rows
    ("x := data.t.over", None),  # no input: undefined
    ("x := input", None),
    ("x := data.budget", {"ünïcödé": "✓", "nested": [{"a": None}, 1.5, True]}),
])
def test_an_answer_through_the_native_call_is_the_public_apis(
        engine: Any, query: str, policy_input: Any) -> None:
    assert evaluate_query(engine, query, policy_input) == engine.eval_query(query, policy_input)


def test_an_error_through_the_native_call_is_the_public_apis(engine: Any) -> None:
    with pytest.raises(OpaError) as public:
        engine.eval_query("x := data.t.over", {"amount": "ten"})
    with pytest.raises(OpaError) as ours:
        evaluate_query(engine, "x := data.t.over", {"amount": "ten"})
    assert (ours.value.code, ours.value.message) == (public.value.code, public.value.message)


def test_a_closed_engine_raises_as_the_public_api_does(engine: Any) -> None:
    engine.close()
    with pytest.raises(OpaError) as public:
        engine.eval_query("x := 1")
    with pytest.raises(OpaError) as ours:
        evaluate_query(engine, "x := 1", None)
    assert ours.value.code == public.value.code == "closed"


def _stand_in(**functions: Any) -> Any:
    """An engine whose native library declares `functions` (name -> (argtypes, restype))."""
    lib = SimpleNamespace(**{name: SimpleNamespace(argtypes=argtypes, restype=restype)
                             for name, (argtypes, restype) in functions.items()})
    return SimpleNamespace(_lib=lib, _handle=1, _eval_lock=threading.RLock())


def test_a_changed_declaration_is_refused_naming_the_bindings_version() -> None:
    functions = dict(opa_native.NATIVE_FUNCTIONS)
    functions["OpaEvalQuery"] = ([ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p],
                                 ctypes.c_char_p)
    with pytest.raises(BindingsChanged, match=re.escape(VERSION)) as refused:
        check_bindings(_stand_in(**functions))
    assert re.search(r"OpaEvalQuery is declared \(\w+, c_char_p, c_char_p\) -> c_char_p, "
                     r"not \(\w+, c_char_p, c_char_p, c_int, c_int\) -> c_void_p",
                     str(refused.value)), refused.value


def test_a_missing_symbol_is_refused_naming_the_bindings_version() -> None:
    functions = dict(opa_native.NATIVE_FUNCTIONS)
    del functions["OpaFreeString"]
    with pytest.raises(BindingsChanged, match=f"{re.escape(VERSION)}.*has no OpaFreeString"):
        check_bindings(_stand_in(**functions))
    with pytest.raises(BindingsChanged, match="_eval_lock"):
        check_bindings(SimpleNamespace(**{**vars(_stand_in(**opa_native.NATIVE_FUNCTIONS)),
                                          "_eval_lock": None}))
