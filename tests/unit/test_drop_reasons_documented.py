"""Every reason a counter counts is explained to operators in docs/operations.md ("Drop
reasons"): one table per reason enum, one row per member, read from the enums at run
time. A reason added to the code without its row fails here, and so does a row left
behind for a reason that is gone.

    enum (found by walking naas)          table in operations.md (first header cell)
    naas.core.wire.DropReason      --->   `drops` reason
    naas.daemon.udp.UdpDrop        --->   `udp_send_drops` reason
    naas.daemon.tap.TapDrop        --->   `tap_write_drops` reason
    naas.pop.limits.Refusal        --->   `refusals` reason
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import naas

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# the counter each enum's reasons are shown under (naas status --json), as its table's header says
TABLES: dict[str, str] = {
    "naas.core.wire.DropReason": "`drops` reason",
    "naas.daemon.udp.UdpDrop": "`udp_send_drops` reason",
    "naas.daemon.tap.TapDrop": "`tap_write_drops` reason",
    "naas.pop.limits.Refusal": "`refusals` reason",
}
REASON_ENUM = re.compile(r"Drop|Refusal")  # the names of enums whose members are counted reasons


def reason_enums() -> dict[str, type[enum.Enum]]:
    """Every Enum of the naas package whose name says it holds reasons for dropping, by
    its qualified name."""
    found = {}
    for info in pkgutil.walk_packages(naas.__path__, "naas."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, enum.Enum)
                and value.__module__ == module.__name__
                and REASON_ENUM.search(name)
            ):
                found[f"{module.__name__}.{value.__qualname__}"] = value
    return found


def tables(markdown: str) -> dict[str, list[str]]:
    """Each table's first header cell -> the first cells of its rows, without backquotes."""
    found: dict[str, list[str]] = {}
    lines = markdown.splitlines()
    for at, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[at + 1].strip()):
            rows = []
            for row in lines[at + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(row.split("|")[1].strip().strip("`"))
            found[line.split("|")[1].strip()] = rows
    return found


REASON_ENUMS = reason_enums()


def test_every_reason_enum_has_a_table() -> None:
    assert {"naas.core.wire.DropReason", "naas.daemon.udp.UdpDrop"} <= REASON_ENUMS.keys()  # the walk works
    untabled = sorted(REASON_ENUMS.keys() - TABLES.keys())
    assert not untabled, f"reason enums with no table in TABLES (and docs/operations.md): {untabled}"


@pytest.mark.parametrize("name", sorted(REASON_ENUMS))
def test_every_reason_is_explained_in_operations_md(name: str) -> None:
    reasons, header = REASON_ENUMS[name], TABLES.get(name)
    assert header is not None, f"{name}: no table in TABLES"
    documented = tables(OPERATIONS.read_text()).get(header)
    assert documented is not None, f'docs/operations.md has no table headed "| {header} |"'
    values = [member.value for member in reasons]
    missing = [value for value in values if value not in documented]
    gone = [row for row in documented if row not in values]
    assert not missing, f'{reasons.__name__}: add rows to the "{header}" table: {missing}'
    assert not gone, f"{reasons.__name__}: rows for reasons that no longer exist: {gone}"
    assert len(documented) == len(set(documented)), "a reason documented twice"
