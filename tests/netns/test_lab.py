"""The namespace lab itself: reachability, blocking, and leaving nothing behind.

desktop 10.100.1.10   laptop 10.100.1.11   web 10.100.2.10   db 10.100.3.10
      \\                  |                    |                /
       +---- br0 onprem --+     br1 aws --------+   br2 alibaba -+
                 (all three bridges in the "underlay" router namespace)
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from naas.lab import Lab, LabError, cleanup_stale, remove_saved_labs
from naas.lab.netns import NETNS_DIR

pytestmark = pytest.mark.netns

HOSTS = {"desktop": "onprem", "laptop": "onprem", "web": "aws", "db": "alibaba"}


def namespaces_with(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.startswith(prefix)]


def sleeper_is_not_ours(pid: int) -> bool:
    """True if `pid` now names another process (the number was reused)."""
    try:
        return "sleep" not in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return True


def pings(lab: Lab, source: str, target: str) -> bool:
    address = str(lab.host(target).address)
    return lab.host(source).run(["ping", "-n", "-c1", "-W2", address], timeout=10).returncode == 0


def test_every_host_reaches_every_other(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(hosts=HOSTS)
    assert str(lab.host("laptop").address) == "10.100.1.11"
    assert str(lab.host("db").address) == "10.100.3.10"
    unreachable = [(a, b) for a in HOSTS for b in HOSTS if a != b and not pings(lab, a, b)]
    assert unreachable == []


def test_block_cuts_both_directions_and_unblock_restores(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(hosts=HOSTS)
    lab.block("desktop", "web")
    assert not pings(lab, "desktop", "web")
    assert not pings(lab, "web", "desktop")
    assert pings(lab, "desktop", "db")  # only that pair is cut
    assert pings(lab, "laptop", "web")
    lab.unblock("desktop", "web")
    assert pings(lab, "desktop", "web")
    assert pings(lab, "web", "desktop")


def test_close_removes_namespaces_processes_and_state(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(hosts=HOSTS)
    sleeper = lab.host("web").popen(["sleep", "60"])
    assert set(namespaces_with(lab.prefix)) == set(lab.namespaces)
    assert lab.state_path.exists()
    lab.close()
    lab.close()  # idempotent
    assert namespaces_with(lab.prefix) == []
    assert sleeper.poll() is not None
    assert not lab.state_path.exists()


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_router(self: Lab) -> None:
        raise RuntimeError("router broke")

    monkeypatch.setattr(Lab, "_build_router", broken_router)
    lab = Lab(hosts=HOSTS)
    with pytest.raises(RuntimeError, match="router broke"):
        lab.start()
    assert namespaces_with(lab.prefix) == []
    assert not lab.state_path.exists()


def test_lab_refuses_to_reuse_an_existing_namespace(tmp_path: Path) -> None:
    lab = Lab(hosts={"a": "onprem"}, lab_id=secrets.token_hex(3), state_dir=tmp_path)
    squatter = lab.host("a").namespace
    subprocess.run(["ip", "netns", "add", squatter], check=True, timeout=10)
    try:
        with pytest.raises(LabError, match="already exist"):
            lab.start()
        lab.close()
        assert namespaces_with(lab.prefix) == [squatter]  # not ours: left alone
    finally:
        subprocess.run(["ip", "netns", "delete", squatter], timeout=10)


CHILD = """
import sys, time
from pathlib import Path
from naas.lab import Lab
lab = Lab(hosts={{"a": "onprem"}}, prefix="{prefix}", state_dir=Path("{state_dir}")).start()
lab.host("a").popen(["sleep", "60"])
work = Path("{state_dir}") / "work"  # like the demo's work directory, CA key and all
work.mkdir()
(work / "ca.key").write_text("secret")
lab.own(work)
if "{mode}" == "keep":
    lab.keep()
print(lab.prefix, flush=True)
if "{mode}" == "crash":
    time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["crash", "keep"])
def test_leftovers_are_removed_by_the_right_tool(mode: str, tmp_path: Path) -> None:
    if not NETNS_DIR.exists():
        NETNS_DIR.mkdir(parents=True)
    prefix = f"nt{secrets.token_hex(2)}-"  # unique: never touches other runs' labs
    script = CHILD.format(prefix=prefix, state_dir=tmp_path, mode=mode)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        lab_prefix = child.stdout.readline().strip()
        assert lab_prefix.startswith(prefix)
        if mode == "crash":
            child.kill()
        child.wait(timeout=10)
        created = namespaces_with(lab_prefix)
        assert len(created) == 2
        (state_file,) = tmp_path.glob("*.json")
        saved = json.loads(state_file.read_text())
        (sleeper,) = (p["pid"] for p in saved["processes"])
        assert saved["paths"] == [str(tmp_path / "work")]
        if mode == "keep":
            assert cleanup_stale(prefix, tmp_path) == []  # a kept lab is not stale
            assert len(namespaces_with(lab_prefix)) == 2
            assert len(remove_saved_labs(tmp_path)) == 1
        else:
            assert sorted(cleanup_stale(prefix, tmp_path)) == sorted(created)
        deadline = time.monotonic() + 5
        while namespaces_with(lab_prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert namespaces_with(lab_prefix) == []
        assert list(tmp_path.glob("*.json")) == []
        assert not (tmp_path / "work").exists(), "the lab's own directory went with it"
        assert not Path(f"/proc/{sleeper}").exists() or sleeper_is_not_ours(sleeper)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        remove_saved_labs(tmp_path)
        cleanup_stale(prefix, tmp_path)
