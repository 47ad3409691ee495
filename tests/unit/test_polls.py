"""The agent's polls while frames flow (daemon/runner.py; docs/performance.md "Polling
while frames flow", "Polls a frame makes needless" and "Warming the kernel's path"): when
a poll looks and warms the path up, when it does nothing, and that the grid of polls
goes on either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from naas.daemon import runner
from naas.daemon.runner import POLL_LINGER, Agent
from naas.daemon.state import NodeDir

NOW = 1000.0
INTERVAL = 0.002


class Loop:
    """The two calls of the event loop a poll makes: the clock, and the next poll."""

    def __init__(self) -> None:
        self.armed: list[float] = []

    def time(self) -> float:
        return NOW

    def call_later(self, delay: float, callback: Any) -> str:
        self.armed.append(delay)
        return "handle"


class Quiet:
    """naas0 and the socket with nothing to read; counts the looks."""

    def __init__(self) -> None:
        self.reads = 0

    def read_batch(self, *_: int) -> list[bytes]:
        self.reads += 1
        return []

    def receive_coalesced(self, *_: int) -> list[Any]:
        self.reads += 1
        return []


class Core:
    def __init__(self) -> None:
        self.warm_ups = 0

    def warm_up(self, now: float) -> bool:
        self.warm_ups += 1
        return True


class Echo:
    """The mesh socket's loopback twin: echoes come back, or (``back=False``) they do not."""

    def __init__(self, back: bool = True) -> None:
        self.back = back
        self.echoes = 0
        self.closed = False
        self.local_address = ("127.0.0.1", 4000)

    def echo(self, payload: bytes) -> bool:
        self.echoes += 1
        return self.back

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    monkeypatch.setattr(runner, "monotonic", lambda: NOW)
    polling = Agent(NodeDir(tmp_path), poll_interval=INTERVAL)
    polling._loop = Loop()  # type: ignore[assignment]
    polling._tap = polling._udp = Quiet()  # type: ignore[assignment]
    polling.core = Core()  # type: ignore[assignment]
    polling._warm_socket = Echo()  # type: ignore[assignment]
    polling._traffic_at = NOW - 0.1  # frames flowed 100 ms ago: still inside POLL_LINGER
    return polling


def looks(agent: Agent) -> int:
    reads: int = agent._tap.reads  # type: ignore[union-attr]
    return reads


def test_a_poll_after_a_quiet_interval_looks_and_warms_the_path_up(agent: Agent) -> None:
    agent._tap_done_at = NOW - 3 * INTERVAL
    agent._udp_done_at = NOW - 2.5 * INTERVAL
    agent._poll_fired()
    assert (agent.polls, agent.warm_ups, looks(agent)) == (1, 1, 2)
    assert agent.core.warm_ups == 1  # type: ignore[union-attr]
    assert (agent.kernel_warm_ups, agent._warm_socket.echoes) == (1, 1)  # type: ignore[union-attr]
    assert agent._loop.armed == [INTERVAL]  # type: ignore[union-attr]


def test_an_echo_that_does_not_come_back_ends_the_kernel_warm_ups(agent: Agent) -> None:
    """Loopback down in the agent's namespace: the poll goes on, without echoes from then on."""
    twin = agent._warm_socket = Echo(back=False)  # type: ignore[assignment]
    agent._poll_fired()
    assert (agent.polls, agent.warm_ups, agent.kernel_warm_ups) == (1, 1, 0)
    assert twin.closed and agent._warm_socket is None
    agent._poll_fired()
    assert (agent.polls, agent.warm_ups, twin.echoes) == (2, 2, 1)
    assert agent.warm_ups_failed == 0  # the core's warm-up still works


@pytest.mark.parametrize("descriptor", ["_tap_done_at", "_udp_done_at"])
def test_a_poll_soon_after_a_frame_does_nothing_but_keep_the_grid(agent: Agent, descriptor: str) -> None:
    """Pings 1 ms apart: each frame has just warmed the path; a poll would only delay the next."""
    agent._tap_done_at = agent._udp_done_at = NOW - 3 * INTERVAL
    setattr(agent, descriptor, NOW - INTERVAL / 2)
    agent._poll_fired()
    assert (agent.polls, agent.warm_ups, looks(agent)) == (0, 0, 0)
    assert agent.core.warm_ups == 0  # type: ignore[union-attr]
    assert agent._warm_socket.echoes == 0  # type: ignore[union-attr]
    assert agent._loop.armed == [INTERVAL]  # type: ignore[union-attr]


def test_polls_stop_once_naas0_has_been_quiet_for_the_linger(agent: Agent) -> None:
    agent._traffic_at = NOW - 2 * POLL_LINGER
    agent._poll_fired()
    assert (agent.polls, looks(agent)) == (0, 0)
    assert agent._loop.armed == []  # type: ignore[union-attr]
