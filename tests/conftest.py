"""Checks that hold for the whole run, whichever tests it selects.

A test run must leave no files behind outside its own temporary directories. Two
kinds did once: ``..BOUND`` and ``..PREINIT`` in the directory a DHCP client was started
from (a script of tests/e2e/test_story.py that lost its output path when dhclient cleared
the environment; they were committed at the repository root), and ``/tmp/.nstat.u<uid>``,
the history file of ``nstat`` (tests/e2e/test_fast_path.py; nstat writes it unless given
``--noupdate``, and looks at ``NSTAT_HISTORY``, never at ``TMPDIR``). Hypothesis keeps
its caches in ``.hypothesis/`` of the current directory, from collection on, unless
told otherwise: here, in a temporary directory removed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

REPOSITORY = Path(__file__).resolve().parent.parent
_BEFORE = pytest.StashKey[dict[Path, float]]()
_HYPOTHESIS_HOME = pytest.StashKey[Path]()


def left_behind_candidates() -> dict[Path, float]:
    """The files a run must not create or touch, with their modification times."""
    found: dict[Path, float] = {}
    for place in dict.fromkeys([REPOSITORY, Path.cwd()]):
        # "..?*": what "$OUT.$1.$reason" makes of an empty $OUT
        for path in [*place.glob("..?*"), place / ".hypothesis"]:
            if path.exists():
                found[path] = path.stat().st_mtime
    history = Path(os.environ.get("NSTAT_HISTORY", f"/tmp/.nstat.u{os.getuid()}"))
    if history.exists():
        found[history] = history.stat().st_mtime
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BEFORE] = left_behind_candidates()
    home = config.stash[_HYPOTHESIS_HOME] = Path(tempfile.mkdtemp(prefix="naas-hypothesis-"))
    set_hypothesis_home_dir(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    set_hypothesis_home_dir(None)
    if _HYPOTHESIS_HOME in config.stash:
        shutil.rmtree(config.stash[_HYPOTHESIS_HOME], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _run_leaves_no_files_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    before = request.config.stash[_BEFORE]
    after = left_behind_candidates()
    left = sorted(str(path) for path, mtime in after.items() if before.get(path) != mtime)
    assert not left, f"the test run left files behind (or rewrote them): {', '.join(left)}"


# The throwaway PostgreSQL cluster's fixtures (postgres_cluster, postgres_url): tests/pg.py.
pytest_plugins = ["pg"]
