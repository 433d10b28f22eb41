"""House rules checked by tools: imports only go down the rooms, configs only wire, the Model Zoo's own linters.

The zoo's checks are its ``runtests.sh --codeformat`` steps with its settings (``setup.cfg`` here holds them):
``isort --check``, ``black --skip-magic-trailing-comma --check`` and ``flake8`` with bugbear, comprehensions,
pep8-naming and executable plugins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

MAX_EXPRESSION = 160  # characters of a `$` expression in configs/


def _tool(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env or dict(os.environ)
    )


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return _tool("-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", cwd=cwd, env=env)


def test_the_layers_contract_names_every_room_and_holds():
    contracts = _pyproject_contracts()
    (contract,) = [c for c in contracts if c["type"] == "layers"]
    rooms = {room.strip() for layer in contract["layers"] for room in layer.split("|")}
    package = ROOT / "vfss_agglo_bundle"
    found = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    assert rooms == found, f"rooms in the contract {sorted(rooms)} != rooms in the package {sorted(found)}"
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{len(contracts)} kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, imported, contract",
    [
        ("utils/io.py", "vfss_agglo_bundle.workflow.stages", "Rooms: imports only go down"),
        ("networks/adaptors.py", "vfss_agglo_bundle.teachers.base", "networks never import teachers"),
        ("data/formats.py", "vfss_agglo_bundle.phantom.anatomy", "data never imports the phantom"),
    ],
)
def test_an_import_against_a_contract_breaks_it(tmp_path, module, imported, contract):
    """The contracts can fail: a copy of the package where a room imports what its contract forbids is refused."""
    shutil.copytree(ROOT / "vfss_agglo_bundle", tmp_path / "vfss_agglo_bundle", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "vfss_agglo_bundle" / module
    package, _, name = imported.rpartition(".")
    path.write_text(path.read_text() + f"\nfrom {package} import {name}  # noqa\n")
    result = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0
    source = "vfss_agglo_bundle." + module.removesuffix(".py").replace("/", ".")
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout[-2000:]
    assert f"{source} -> {imported}" in result.stdout


def test_the_architecture_page_lists_the_rooms_of_the_layers_contract():
    """docs/architecture.md's table of rooms is the layers contract, in its order, and names both forbidden imports."""
    contracts = _pyproject_contracts()
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    page = (ROOT / "docs/architecture.md").read_text()
    table = page.split("## The rooms, top to bottom", 1)[1].split("\n\n", 2)[1]
    rooms = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    assert rooms == layers
    for contract in (c for c in contracts if c["type"] == "forbidden"):
        (source,), (forbidden,) = contract["source_modules"], contract["forbidden_modules"]
        source, forbidden = source.rpartition(".")[2], forbidden.rpartition(".")[2]
        prose = " ".join(page.split()).replace("never import ", "never imports ")
        assert f"`{source}` never imports `{forbidden}`" in prose


def test_no_config_addresses_a_handler_or_anything_else_by_list_position():
    """Config ids name what they refer to: never `@x#handlers#3`, `handlers#4#_disabled_` or `[1]` on a reference."""
    for path in sorted((ROOT / "configs").glob("*")):
        if path.suffix not in (".yaml", ".yml", ".json") or path.name == "metadata.json":
            continue
        text = path.read_text()
        code = "\n".join(line.split(" #", 1)[0] for line in text.splitlines())  # YAML comments may show examples
        positional = re.findall(r"[@%][\w#:./]*#\d+\b|^\s*\w+(?:#\w+)*#\d+#|@[\w#]+\[\d+\]", code, re.MULTILINE)
        assert not positional, f"{path.name}: {positional}"


def _pyproject_contracts() -> list[dict]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_configs_only_wire_no_long_expressions():
    expressions = []
    for path in sorted((ROOT / "configs").glob("*")):
        if path.suffix in (".yaml", ".yml"):
            config = yaml.safe_load(path.read_text())
        elif path.suffix == ".json" and path.name != "metadata.json":
            config = json.loads(path.read_text())
        else:
            continue
        expressions += [(len(s), path.name, s) for s in _strings(config) if s.startswith("$")]
    assert len(expressions) > 20  # the walk finds the configs' expressions
    longest = max(expressions)
    assert longest[0] <= MAX_EXPRESSION, f"{longest[1]}: {longest[0]} characters: {longest[2]}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool",
    [
        ("-m", "isort", "--check", "."),
        ("-m", "black", "--skip-magic-trailing-comma", "--check", "."),
        ("-m", "flake8", ".", "--count", "--statistics"),
    ],
    ids=["isort", "black", "flake8"],
)
def test_the_model_zoo_code_format_checks_pass(tool):
    result = _tool(*tool)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
