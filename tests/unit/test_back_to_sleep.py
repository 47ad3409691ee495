"""The agent's rule for going back to sleep after the express lane (daemon/runner.py,
docs/performance.md "Back to sleep"): which frames count as having come alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from naas.daemon import runner
from naas.daemon.runner import BURST_GAP, QUIET_GAP, Agent
from naas.daemon.state import NodeDir

NOW = 1000.0


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    monkeypatch.setattr(runner, "monotonic", lambda: NOW)
    return Agent(NodeDir(tmp_path))


def test_a_frame_after_a_lull_came_alone_whatever_came_before(agent: Agent) -> None:
    for lone in (False, True):
        agent._lone = lone
        assert agent._alone(NOW - 2 * QUIET_GAP)


def test_after_a_batch_a_frame_sooner_than_the_quiet_gap_is_read_on(agent: Agent) -> None:
    """Under load a turn on the other descriptor can outlast BURST_GAP: its frames queue."""
    agent._lone = False
    assert not agent._alone(NOW - (BURST_GAP + QUIET_GAP) / 2)


def test_a_sparse_flow_counts_as_alone_after_a_shorter_gap(agent: Agent) -> None:
    """Pings 1 ms apart: each came alone, and so will the next."""
    agent._lone = True
    assert agent._alone(NOW - (BURST_GAP + QUIET_GAP) / 2)


def test_frames_queued_behind_a_lone_one_are_a_burst(agent: Agent) -> None:
    """The epoll wakes the loop again at once for them: that gap is below BURST_GAP."""
    agent._lone = True
    assert not agent._alone(NOW - BURST_GAP / 2)
