"""Fixtures for tests that need root: network namespaces, TAP devices, real processes.

`lab_factory` builds `naas.lab.Lab`s and always closes them, pass or fail::

    def test_something(lab_factory):
        lab = lab_factory(hosts={"desktop": "onprem", "web": "aws"})  # DEMO_SITES
        lab.host("desktop").run(["ping", "-c1", "-W2", str(lab.host("web").address)])

Tests marked ``netns`` are skipped when this machine cannot run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from naas.lab import Lab, cleanup_stale


def lab_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    missing = [tool for tool in ("ip", "nft", "ping", "sysctl") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}" if missing else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_unavailable()
    if reason is None:
        return
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def _stale_labs_removed() -> None:
    """Once per session: remove namespaces left by crashed runs (never live or kept labs)."""
    cleanup_stale()


@pytest.fixture
def lab_factory(_stale_labs_removed: None) -> Iterator[Callable[..., Lab]]:
    """``lab_factory(hosts=..., sites=..., **Lab kwargs) -> started Lab``, closed at teardown."""
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    labs: list[Lab] = []

    def build(**kwargs: Any) -> Lab:
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab.start()

    try:
        yield build
    finally:
        for lab in reversed(labs):
            lab.close()
