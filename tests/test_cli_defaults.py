"""No default written twice: what a fire script in ``scripts/`` passes on to the library has the library's default.

A script function forwards a parameter when one of its calls to a ``vfss_agglo_bundle`` function passes it as an
argument, as it is or converted (``split_names(x)``, ``list(x)``, ``None if x is None else ...``, ``LIBRARY_DEFAULT
if x is None else x``). Every such argument, evaluated with the script's defaults, must equal the default of the
library parameter it binds to: ``None`` in the script agrees only where the body then substitutes the library's own
default, and a comma-separated string of names agrees with a tuple or list of the same names. Pairs are found by
reading every script, so a new script or a new parameter is checked without being listed here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from conftest import ROOT
from vfss_agglo_bundle.utils.cli import split_names

EMPTY = inspect.Parameter.empty


class Forward(NamedTuple):
    """One call of a library function in a script function: ``compared`` maps each library parameter it forwards a
    script parameter to onto (the argument evaluated with the script's defaults, the library's default); ``shared``
    holds the names both signatures have, both with a default."""

    script: str
    library: Callable
    compared: dict[str, tuple[Any, Any]]
    shared: set[str]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{path.stem}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _namespace(module: ModuleType, function: ast.FunctionDef) -> dict[str, Any]:
    """The names a script function sees: its module's globals and its own ``from ... import ...``."""
    names = dict(vars(module))
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom):
            imported = importlib.import_module(node.module)
            names.update({alias.asname or alias.name: getattr(imported, alias.name) for alias in node.names})
    return names


def _evaluate(node: ast.expr, names: dict[str, Any]) -> Any:
    return eval(compile(ast.Expression(node), "<script>", "eval"), dict(names))


def _defaults(function: Callable) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(function).parameters.items() if p.default is not EMPTY}


def _forwards(path: Path) -> Iterator[Forward]:
    module = _load(path)
    for function in ast.parse(path.read_text()).body:
        if not isinstance(function, ast.FunctionDef):
            continue
        params = list(inspect.signature(getattr(module, function.name)).parameters)
        defaults = _defaults(getattr(module, function.name))
        names = _namespace(module, function)
        for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
            try:
                library = _evaluate(call.func, names)
            except (NameError, AttributeError):  # a method of one of the body's locals
                continue
            if not (getattr(library, "__module__", None) or "").startswith("vfss_agglo_bundle."):
                continue
            arguments = {keyword.arg: keyword.value for keyword in call.keywords}
            bound = inspect.signature(library).bind_partial(*call.args, **arguments).arguments
            library_defaults = _defaults(library)
            compared = {}
            for name, node in bound.items():
                used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in params}
                if not used or name not in library_defaults or not used <= set(defaults):
                    continue  # passes no script parameter, or one without a default, or has no library default
                try:
                    value = _evaluate(node, {**names, **{n: defaults[n] for n in used}})
                except NameError:  # computed with the body's locals too: not a default passed on
                    continue
                compared[name] = (value, library_defaults[name])
            if compared:
                shared = set(defaults) & set(library_defaults)
                yield Forward(f"{path.stem}.{function.name}", library, compared, shared)


FORWARDS = [forward for path in sorted((ROOT / "scripts").glob("*.py")) for forward in _forwards(path)]


def _same(script: Any, library: Any) -> bool:
    """Equal defaults; a comma-separated string of names and a tuple or list of the same names agree."""
    both = (script, library)
    if isinstance(script, str) != isinstance(library, str) and all(isinstance(v, (str, tuple, list)) for v in both):
        return split_names(script) == split_names(library)
    if all(isinstance(v, (tuple, list)) for v in both):
        return list(script) == list(library)
    return script == library


def test_the_scripts_forward_to_the_library_functions():
    """The reading finds the forwards (so the check below cannot pass by finding nothing)."""
    found = {(f.script, f.library.__name__) for f in FORWARDS}
    assert {
        ("benchmark.run", "run_benchmark"),
        ("benchmark.ablate", "inference_ablation"),
        ("benchmark.video", "video_throughput"),
        ("benchmark.phantom", "phantom_speed"),
        ("export.export", "export_segmenter"),
        ("study.run", "run_study_workers"),
        ("benchmark.teachers", "teacher_cost"),
        ("benchmark.store_fill", "store_fill_processes"),
    } <= found


@pytest.mark.parametrize("forward", FORWARDS, ids=lambda f: f"{f.script}->{f.library.__name__}")
def test_script_defaults_are_the_librarys(forward):
    wrong = {
        name: f"script gives {value!r}, library {default!r}"
        for name, (value, default) in forward.compared.items()
        if not _same(value, default)
    }
    assert not wrong, f"{forward.script} restates {forward.library.__qualname__}'s defaults differently: {wrong}"
    # every parameter both signatures name, both with a default, is forwarded as it is (not through a local)
    assert forward.shared <= set(forward.compared), sorted(forward.shared - set(forward.compared))
