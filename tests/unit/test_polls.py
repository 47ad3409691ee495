"""The agent's polls while frames flow (daemon/runner.py, docs/performance.md "Polling
while frames flow" and "Polls a frame makes needless"): when a poll looks and warms the
path up, when it does nothing, and that the grid of polls goes on either way."""

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


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    monkeypatch.setattr(runner, "monotonic", lambda: NOW)
    polling = Agent(NodeDir(tmp_path), poll_interval=INTERVAL)
    polling._loop = Loop()  # type: ignore[assignment]
    polling._tap = polling._udp = Quiet()  # type: ignore[assignment]
    polling.core = Core()  # type: ignore[assignment]
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
    assert agent._loop.armed == [INTERVAL]  # type: ignore[union-attr]


@pytest.mark.parametrize("descriptor", ["_tap_done_at", "_udp_done_at"])
def test_a_poll_soon_after_a_frame_does_nothing_but_keep_the_grid(agent: Agent, descriptor: str) -> None:
    """Pings 1 ms apart: each frame has just warmed the path; a poll would only delay the next."""
    agent._tap_done_at = agent._udp_done_at = NOW - 3 * INTERVAL
    setattr(agent, descriptor, NOW - INTERVAL / 2)
    agent._poll_fired()
    assert (agent.polls, agent.warm_ups, looks(agent)) == (0, 0, 0)
    assert agent.core.warm_ups == 0  # type: ignore[union-attr]
    assert agent._loop.armed == [INTERVAL]  # type: ignore[union-attr]


def test_polls_stop_once_naas0_has_been_quiet_for_the_linger(agent: Agent) -> None:
    agent._traffic_at = NOW - 2 * POLL_LINGER
    agent._poll_fired()
    assert (agent.polls, looks(agent)) == (0, 0)
    assert agent._loop.armed == []  # type: ignore[union-attr]
