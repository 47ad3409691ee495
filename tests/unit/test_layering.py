"""The sans-IO rule: model/ and core/ import no I/O, clock or randomness, and the
dependencies point one way (model <- core <- daemon/pop/control <- cli); control/ (the
use cases) knows neither argparse nor HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "naas"
FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "time",
    "random",
    "secrets",
    "os",
    "subprocess",
    "select",
    "threading",
    "naas.daemon",
    "naas.pop",
    "naas.cli",
    "naas.lab",
}
FORBIDDEN_IN_MODEL = FORBIDDEN_IN_CORE | {"naas.core"}
# the use cases serve the CLI and the REST API alike: neither argument parsing nor HTTP
FORBIDDEN_IN_CONTROL = {
    "argparse",
    "aiohttp",
    "http",
    "urllib",
    "naas.cli",
    "naas.pop.server",
    "naas.pop.api",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((SRC / package).glob("*.py")):
        for name in imports_of(path):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(SRC)} imports {name}")
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("core", FORBIDDEN_IN_CORE), ("model", FORBIDDEN_IN_MODEL), ("control", FORBIDDEN_IN_CONTROL)],
)
def test_pure_packages_do_no_io(package: str, forbidden: set[str]) -> None:
    assert (SRC / package).is_dir()
    assert _violations(package, forbidden) == []


def test_only_crypto_module_imports_the_crypto_library_in_the_core() -> None:
    users = [
        p.name
        for p in (SRC / "core").glob("*.py")
        if any(n.startswith("cryptography") for n in imports_of(p))
    ]
    assert users == ["crypto.py"]


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom socket import socket\n")
    assert imports_of(bad) == {"time", "socket"}
