"""The packages of `app` are layers of the pipeline, and no layer imports one above it.

A module may import its own package and the layers below its own; two packages on one
layer (facts and rules; policy and dispatch) know nothing of each other. Every import
counts, also those inside functions and under TYPE_CHECKING: each is a dependency a
newcomer must follow. The root package `app` (a lazy `create_app`) sits above them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"

LAYERS = {  # what each package of app owns is in its __init__ docstring
    "shared": 0,
    "facts": 1, "rules": 1,
    "policy": 2, "dispatch": 2,
    "decisions": 3,
    "replay": 4,
    "service": 5,
    "web": 6,
    "api": 7,
    "cli": 8,
}


def _unit(module: str) -> str:
    """`app.decisions.log` -> `decisions`; `app.service` -> `service`; `app` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(
        ".__init__")


def _imports(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every import of app in `source`, relative ones resolved."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}" if base == "app" else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == "app" or name.startswith("app.")]


def _upward(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of `module` (its `source`) that reach its own layer or one above."""
    own = _unit(module)
    upward = []
    for line, name in _imports(source, module, is_package=is_package):
        unit = _unit(name)
        if unit == own:
            continue
        if unit not in LAYERS or LAYERS[unit] >= LAYERS[own]:
            upward.append(f"{module}:{line} imports {name} ({unit}, layer "
                          f"{LAYERS.get(unit)}) from {own} (layer {LAYERS[own]})")
    return upward


MODULES = sorted(p for p in APP.rglob("*.py") if p != APP / "__init__.py")


def test_every_package_of_app_is_on_a_layer() -> None:
    units = {_unit(_module_of(path)) for path in MODULES}
    assert units == set(LAYERS), "a new package: give it a layer, and say why in its docstring"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(APP.parent)))
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    assert _upward(path.read_text(), _module_of(path), is_package=path.name == "__init__.py") == []


def test_each_package_says_what_it_owns_and_may_import() -> None:
    for package in (p for p in APP.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert doc, f"{package.name}/__init__.py has no docstring"
        if package.name not in ("api", "web"):  # the top layers may import what they need
            assert "import" in doc.lower(), f"{package.name}: say which layers it may import"


def test_the_check_sees_an_upward_import() -> None:
    """The check above can fail: in a rules module, imports of decisions (at the top),
    policy (relative, a sibling layer) and replay (inside a function) are all upward."""
    source = ("from app.decisions.log import DecisionLog\nfrom ..policy import gate\n"
              "from . import model\nfrom app.shared import keys\n"
              "def f():\n    import app.replay.sandbox\n")
    found = _upward(source, "app.rules.sample")
    assert [line.split(" imports ")[1].split(" ")[0] for line in found] == [
        "app.decisions.log", "app.policy", "app.replay.sandbox"]
